import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from fake_trainer import main

sys.exit(main("networks/merge_lora.py"))
