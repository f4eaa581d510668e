"""Pure logic of TADS: functions on arrays, tables and torch modules. No Dagster imports here.

Importing the parent package `tads_assets` first makes torchvision importable on CPU torch
(see `torch_compat`).
"""
