"""kohya sd-scripts, as cml's process sees it: finding a checkout (lookup.py), getting one at the pinned commit
(checkout.py), its requirements (requirements.py), the environment its processes run in (environment.py), and the
tokenizers it loads (tokenizers.py)."""

from cml.sdscripts.environment import check_imports, python_env
from cml.sdscripts.lookup import SdScripts, SdScriptsNotFound, commit_warning, locate, setup_hint

__all__ = ["SdScripts", "SdScriptsNotFound", "check_imports", "commit_warning", "locate", "python_env", "setup_hint"]
