"""The kernel library (the seed documents' Urza and Tezzeret): kernel artifacts, what each
kernel did in past runs, the ranking of blueprints built from it, and background compilation.

See docs/kernel-library.md.
"""
