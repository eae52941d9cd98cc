"""Batch import and export: files in, files out, at COPY speed.

``readers`` turns CSV / JSON Lines into numbered raw records, ``fields``
parses and normalises single values, ``kinds`` says what each importable
kind's columns are and how its rows are matched, ``loader`` runs an import in
committed batches, ``blind_index`` keeps the keyed SSN hash members are
matched on, and ``export`` streams a kind back out in the same columns.
"""
