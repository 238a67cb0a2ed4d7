"""Measurement: `anpr eval` (accuracy), `anpr bench` (speed), their plots, and the
crop transplants that measure crops as the detector cuts them.

Imports run and every stage below it.
"""
