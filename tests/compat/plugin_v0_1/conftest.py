# The plugin is not installed in the kernel's environment: its folder goes on
# sys.path, as ``pip install -e .`` would put it. Its tests register it with
# the test kit's ``plugins=`` (sessions-kernel 0.1's way for a plugin under test).
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
