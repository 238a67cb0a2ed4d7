"""From frames to plate reads: sources and image folders, the plate detector, the
recognisers, plate text and layouts, tracks; the model weights they load.

Imports the top level and config.
"""
