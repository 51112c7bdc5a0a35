"""cml: the Copy Machine Learning Method as one command, over kohya sd-scripts."""

__version__ = "0.1.0"

# sd-scripts commit this version of cml is written and tested against.
PINNED_SD_SCRIPTS_COMMIT = "48d368fa557731ad0488c07304dfeba8c07910eb"
