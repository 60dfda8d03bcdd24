"""Regenerate the settings reference in docs/configuration.md from the Settings model.

Run after adding or changing a setting: ``.venv/bin/python scripts/gen_settings_doc.py``.
``tests/unit/test_settings_doc.py`` fails while the document is stale.
"""

from __future__ import annotations

import sys
from pathlib import Path

from infergate.config.settings_doc import update_document

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"

if __name__ == "__main__":
    changed = update_document(DOC)
    print(f"{DOC}: {'updated' if changed else 'already current'}")
    sys.exit(0)
