"""Evol-Instruct (WizardLM, arXiv 2304.12244): operations, elimination and the Ray round loop."""
