"""``notochord-rt prep``: MIDI folders -> a prepared dataset.

The pipeline, its worker processes, the resume ledger, the spool files and the report.
"""
