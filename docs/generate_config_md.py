"""Rebuild docs/config.md from the RunConfig field help: python docs/generate_config_md.py"""

from pathlib import Path

from augment.config import config_reference

Path(__file__).with_name("config.md").write_text(config_reference(), encoding="utf-8")
