"""Train and evaluate one config over its folds. Every Config field is a flag; see `python train.py --help`."""
import sys

from nanocrystal.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
