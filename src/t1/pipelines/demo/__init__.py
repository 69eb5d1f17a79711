"""`t1 demo`: the whole T1 pipeline on Countdown with a tiny model (:mod:`.run`), its checks (:mod:`.checks`)
and its part of the report (:mod:`.report`)."""

from t1.pipelines.demo.run import DemoConfig, run_demo

__all__ = ["DemoConfig", "run_demo"]
