"""The random walk of the whole explorer (testkit/walk.py) on the embedded model."""

from __future__ import annotations

import time

from hypothesis.stateful import run_state_machine_as_test

from testkit.walk import report_walk, walk_machine


def test_random_walk_on_the_embedded_model(walk_setup, embedded, tiny_gpt2):
    machine, walk_settings = walk_machine(
        {"tiny-gpt2": tiny_gpt2},
        embedded,
        examples=3,
        steps=20,
        idle_timeout=300.0,
        skip_commands=("speak: scan the whole vocabulary",),  # minutes on 49,152 tokens
    )
    started = time.perf_counter()
    run_state_machine_as_test(machine, settings=walk_settings, _min_steps=12)
    report_walk("random walk, embedded model", machine, started)
