"""``python -m distillab ...`` (also the form ``torchrun`` launches)."""

from distillab.cli import main

main()
