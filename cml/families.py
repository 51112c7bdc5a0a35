"""The model families cml trains, one record each: everything cml knows about a family lives here and nowhere else.

A record says how a base model file of the family is recognised (its keys), which sd-scripts trainer, network
module and merge route serve it, which other model files it needs (preset keys under ``[model_files]``, passed as
the trainer's options of the same name), the trainer options sd-scripts' own documentation gives for it (the
recipe flags), how the check draws images with it, and where its LoRAs load. Facts are from sd-scripts at the
pinned commit (its scripts and ``docs/*_train_network.md``) unless said otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SD_DENOISER = "model.diffusion_model."


@dataclass(frozen=True)
class Family:
    name: str  # the preset's family value
    title: str
    trainer: str  # sd-scripts' training script (module name)
    network_module: str  # sd-scripts' LoRA module for it
    # How a single-file base model of the family is recognised: any of these keys (one ending in "." is a prefix).
    detect_any: tuple[str, ...]
    # The prefix of the denoiser's (U-Net's or DiT's) keys in the base file ("" when the file holds the DiT alone).
    denoiser_prefix: str = SD_DENOISER
    covers: str = ""  # the models users know it by
    # The other model files: preset key (= the trainer's option) -> whether the family cannot train without it.
    files: dict[str, bool] = field(default_factory=dict)
    # Merge routes: "checkpoint" (a copy machine model file written, by ``merge_script`` or by cml's child process
    # calling sd-scripts' own library functions when ``merge_script`` is None) and "in_memory" (--base_weights).
    merges: tuple[str, ...] = ("checkpoint", "in_memory")
    merge_script: str | None = None
    lora_merge_script: str | None = None  # LoRA into LoRA (the two-way slider); None: no slider for the family
    generator: str = "gen_img"  # the check's image generator: gen_img / sdxl_gen_img, or "trainer" (the family's own sampling)
    guidance: str = "scale"  # the sample prompt's key the check's guidance_scale goes to (FLUX.1: its embedded guidance)
    recipe: dict[str, object] = field(default_factory=dict)  # sd-scripts' documented options for the family
    text_encoder_cache: bool = False  # the trainer caches the (frozen) text encoders' outputs: cache_text_encoder_outputs
    direct: bool = False  # cml's direct step wraps the family's step (DDPM families only)
    gui: bool = False  # cml writes gui.json for it: the kohya_ss GUI (45088f04) has its LoRA mode, modelled in tests/kohya_gui.py
    # The keys the GUI's model detection (kohya_gui/sd_modeltype.py) ticks the family's box from on Load; a file with
    # none of them loads with the box unticked (empty: the SD families, told apart by their key prefixes).
    gui_detect: tuple[str, ...] = ()
    tokenizers: tuple[str, ...] = ()  # hub ids sd-scripts loads from tokenizer_cache_dir (folder: id with "/" as "_")
    refused: str | None = None  # why cml cannot run it at all here (planned and validated, then refused before writing)
    loads_in: str = ""  # where its LoRAs load, as checked
    comfy_converter: str | None = None  # sd-scripts' converter that writes the ComfyUI file of a LoRA
    tested_here: str = ""  # what this project's machine ran end to end

    @property
    def required_files(self) -> list[str]:
        return [k for k, need in self.files.items() if need]


SD_LOADS = "A1111/Forge, ComfyUI, diffusers (networks.lora files)"

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            "sd1",
            "SD1.x",
            "train_network",
            "networks.lora",
            detect_any=(
                "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
                "cond_stage_model.transformer.embeddings.token_embedding.weight",
            ),
            merge_script="networks/merge_lora.py",
            lora_merge_script="networks/merge_lora.py",
            direct=True,
            gui=True,
            tokenizers=("openai/clip-vit-large-patch14",),
            loads_in=SD_LOADS,
            tested_here="yes: the demo model (make test, make test-full)",
        ),
        Family(
            "sd2",
            "SD2.x",
            "train_network",
            "networks.lora",
            detect_any=("cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight", "cond_stage_model.model.ln_final.weight"),
            merge_script="networks/merge_lora.py",
            lora_merge_script="networks/merge_lora.py",
            direct=True,
            gui=True,
            tokenizers=("stabilityai/stable-diffusion-2",),
            loads_in="A1111/Forge, ComfyUI (diffusers refuses sd-scripts' 1x1-conv projections)",
            tested_here="yes: random weights, v-prediction (make test-slow)",
        ),
        Family(
            "sdxl",
            "SDXL",
            "sdxl_train_network",
            "networks.lora",
            covers="Illustrious, NoobAI, Pony",
            detect_any=("conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight", "model.diffusion_model.label_emb.0.0.weight"),
            merge_script="networks/sdxl_merge_lora.py",
            lora_merge_script="networks/sdxl_merge_lora.py",
            generator="sdxl_gen_img",
            text_encoder_cache=True,
            direct=True,
            gui=True,
            tokenizers=("openai/clip-vit-large-patch14", "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k"),
            loads_in=SD_LOADS,
            tested_here="yes: random weights (make test-slow)",
        ),
        Family(
            "flux",
            "FLUX.1",
            "flux_train_network",
            "networks.lora_flux",
            covers="dev, schnell",
            detect_any=("double_blocks.", "model.diffusion_model.double_blocks."),
            denoiser_prefix="",
            files={"clip_l": True, "t5xxl": True, "ae": True},
            merge_script="networks/flux_merge_lora.py",
            lora_merge_script="networks/flux_merge_lora.py",
            generator="trainer",
            guidance="guidance_scale",
            # docs/flux_train_network.md, "Recommended Settings"
            recipe={"timestep_sampling": "shift", "discrete_flow_shift": 3.1582, "model_prediction_type": "raw", "guidance_scale": 1.0},
            text_encoder_cache=True,
            gui=True,
            gui_detect=("double_blocks.0.img_attn.norm.key_norm.scale", "model.diffusion_model.double_blocks.0.img_attn.norm.key_norm.scale"),
            tokenizers=("openai/clip-vit-large-patch14", "google/t5-v1_1-xxl"),
            loads_in="ComfyUI (sd-scripts' lora_unet keys), Forge; diffusers via networks/convert_flux_lora.py",
            tested_here="yes: 1 double + 1 single block, random weights, sparse zero text encoders (make test-slow)",
        ),
        Family(
            "chroma",
            "Chroma",
            "flux_train_network",
            "networks.lora_flux",
            detect_any=("distilled_guidance_layer.", "model.diffusion_model.distilled_guidance_layer."),
            denoiser_prefix="",
            files={"t5xxl": True, "ae": True},
            merges=("in_memory",),
            generator="trainer",
            # docs/flux_train_network.md: Chroma's recommended settings
            recipe={"model_type": "chroma", "timestep_sampling": "sigmoid", "model_prediction_type": "raw", "guidance_scale": 0.0, "apply_t5_attn_mask": True},
            text_encoder_cache=True,
            tokenizers=("google/t5-v1_1-xxl",),
            loads_in="ComfyUI (lora_unet keys)",
            tested_here="no: its DiT is fixed at 8.9B parameters, beyond this 24 GiB machine",
        ),
        Family(
            "sd3",
            "SD3/SD3.5",
            "sd3_train_network",
            "networks.lora_sd3",
            covers="medium, large",
            detect_any=("model.diffusion_model.joint_blocks.", "joint_blocks."),
            files={"clip_l": True, "clip_g": True, "t5xxl": True, "vae": False},
            merge_script=None,  # none in sd-scripts: cml/sd_process/merge.py with sd-scripts' own functions
            generator="trainer",
            recipe={"weighting_scheme": "uniform"},  # docs/sd3_train_network.md's example
            text_encoder_cache=True,
            gui=True,
            gui_detect=("model.diffusion_model.x_embedder.proj.weight",),
            tokenizers=("openai/clip-vit-large-patch14", "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k", "google/t5-v1_1-xxl"),
            loads_in="ComfyUI (lora_unet keys)",
            tested_here="yes: an MMDiT of depth 1, random weights, sparse zero text encoders (make test-slow)",
        ),
        Family(
            "lumina",
            "Lumina 2",
            "lumina_train_network",
            "networks.lora_lumina",
            detect_any=("cap_embedder.", "model.diffusion_model.cap_embedder.", "context_refiner."),
            denoiser_prefix="",
            files={"gemma2": True, "ae": True},
            merges=("in_memory",),
            generator="trainer",
            text_encoder_cache=True,
            tokenizers=("google/gemma-2-2b",),
            loads_in="ComfyUI (lora_unet keys)",
            tested_here="no: 2.6B DiT and 2.6B Gemma 2 are fixed sizes, beyond this machine; its tokenizer is a gated hub repository",
        ),
        Family(
            "anima",
            "Anima",
            "anima_train_network",
            "networks.lora_anima",
            detect_any=("net.llm_adapter.",),
            denoiser_prefix="net.",
            files={"qwen3": True, "vae": True},
            merge_script=None,  # cml/sd_process/merge.py: sd-scripts' merge-at-load and save_anima_model
            generator="trainer",
            # docs/anima_train_network.md's example
            recipe={"timestep_sampling": "sigmoid", "discrete_flow_shift": 1.0},
            text_encoder_cache=True,
            loads_in="ComfyUI via networks/convert_anima_lora_to_comfy.py (the run writes it)",
            comfy_converter="networks/convert_anima_lora_to_comfy.py",
            tested_here="yes: the fixed 2.1B DiT with random weights, a one-layer Qwen3 (make test-slow)",
        ),
        Family(
            "hunyuan_image",
            "HunyuanImage 2.1",
            "hunyuan_image_train_network",
            "networks.lora_hunyuan_image",
            detect_any=("byt5_in.", "model.diffusion_model.byt5_in."),
            denoiser_prefix="",
            files={"text_encoder": True, "byt5": True, "vae": True},
            merges=("in_memory",),
            generator="trainer",
            text_encoder_cache=True,
            loads_in="ComfyUI via networks/convert_hunyuan_image_lora_to_comfy.py (the run writes it)",
            comfy_converter="networks/convert_hunyuan_image_lora_to_comfy.py",
            tested_here="no: 17B DiT and 8B Qwen2.5-VL are fixed sizes, far beyond this machine",
        ),
    )
}
DIT = tuple(n for n, f in FAMILIES.items() if f.files)  # the families with separate model files


def family(name: str) -> Family:
    return FAMILIES[name]


def detect(keys: set[str]) -> str | None:
    """The family a base model file's keys say it is, most specific first (Chroma and SD3 before FLUX and SD)."""
    prefixes = {".".join(k.split(".")[:n]) + "." for k in keys for n in (1, 2, 3)}
    for name in ("chroma", "hunyuan_image", "lumina", "anima", "sd3", "flux", "sdxl", "sd2", "sd1"):
        if any((d in prefixes) if d.endswith(".") else (d in keys) for d in FAMILIES[name].detect_any):
            return name
    return None


def titles() -> str:
    return ", ".join(f.title for f in FAMILIES.values())
