"""Reading the trainer's progress bar (tqdm as sd-scripts prints it)."""

import math

from cml.runner import Progress


def test_step_loss_and_tqdms_own_time_left():
    p = Progress(marker="steps:")
    assert p.update("steps:  40%|####  | 4/10 [00:05<00:07,  1.2s/it, avr_loss=0.123]")
    assert (p.step, p.total, p.loss, p.remaining) == (4, 10, 0.123, 7.0)
    p.update("steps:  50%|#####  | 250/500 [1:00:00<1:02:03,  1.2s/it, avr_loss=1.2e-05]")
    assert (p.loss, p.remaining) == (1.2e-05, 3723.0)
    p.update("steps:  51%|#####  | 251/500 [1:00:01<?, ?it/s, avr_loss=-inf]")
    assert p.loss == -math.inf and p.step == 251
    assert not p.update("caching latents: 1/1 [00:00<00:00]")  # not the training bar
