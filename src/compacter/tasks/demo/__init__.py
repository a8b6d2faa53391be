"""Demo task data and the script that writes it (`make_demo.py`)."""
