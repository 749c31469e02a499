"""What each feature plugin adds to a read of an existing session, one plugin at a time.

    python benchmarks/bench_plugins.py                 # SQLite
    python benchmarks/bench_plugins.py --url postgresql+psycopg://postgres@127.0.0.1/test

Builds one application per model (the bare kernel, each feature plugin alone, all
four together), every one the same way and on its own table, stores one session in
each, then times only reads of it, interleaving the models in chunks so that
machine load falls on all alike. A read inside the plugins' delays writes nothing:
each row is one SELECT, which the script checks before timing. Prints the median
microseconds per read and what each model adds over the bare kernel.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import Any

import sqlalchemy as sa
import webtest
from webob import Request

from sessions_kernel.testing import StatementCounter, make_model, make_wsgi_app

SETTINGS = {
    "idle_timeout": 1800,
    "extension_delay": 60,
    "absolute_timeout": 86400,
    "renewal_timeout": 3600,
}
MODELS = {
    "kernel": (),
    "idle timeout": ("sessions_idle_timeout:IdleMixin",),
    "absolute timeout": ("sessions_absolute_timeout:AbsoluteMixin",),
    "renewal": ("sessions_renewal:RenewalMixin",),
    "cookie settings": ("sessions_cookie_settings:ConfigCookieMixin",),
    "all four": (
        "sessions_idle_timeout:IdleMixin",
        "sessions_absolute_timeout:AbsoluteMixin",
        "sessions_renewal:RenewalMixin",
        "sessions_cookie_settings:ConfigCookieMixin",
    ),
}


def load(reference: str) -> type:
    module, name = reference.split(":")
    return getattr(__import__(module, fromlist=[name]), name)


def build(engine: sa.Engine, label: str, mixins: tuple[str, ...], index: int) -> tuple[Any, dict]:
    model = make_model(*map(load, mixins), tablename=f"bench_plugins_{index}_{os.getpid()}")
    model.metadata.drop_all(engine)
    model.metadata.create_all(engine)
    names = {"idle_timeout", "extension_delay"} if "Idle" in str(mixins) else set()
    names |= {"absolute_timeout"} if "Absolute" in str(mixins) else set()
    names |= {"renewal_timeout"} if "Renewal" in str(mixins) else set()
    app = make_wsgi_app(model, engine, settings={k: SETTINGS[k] for k in names})
    browser = webtest.TestApp(app)
    browser.post_json("/set", {"a": 1})
    environ = Request.blank("/read", headers={"Cookie": f"session={browser.cookies['session']}"})
    counter = StatementCounter(engine)
    with counter:
        Request(dict(environ.environ)).get_response(app)
    if counter.kinds() != ["SELECT"]:
        raise SystemExit(f"{label}: a read issued {counter.kinds()}, expected one SELECT")
    return app, environ.environ, model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="SQLAlchemy URL (default: a SQLite file in a temp dir)")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--iterations", type=int, default=300, help="reads per model and round")
    args = parser.parse_args(argv)
    url = args.url or f"sqlite:///{tempfile.mkdtemp()}/bench_plugins.sqlite"
    engine = sa.create_engine(url)
    apps = {
        label: build(engine, label, mixins, i) for i, (label, mixins) in enumerate(MODELS.items())
    }
    medians: dict[str, list[float]] = {label: [] for label in apps}
    try:
        labels = list(apps)
        for round_ in range(args.rounds + 1):  # the first round warms up and is dropped
            # rotate the order each round, so no model always runs first or after another
            shift = round_ % len(labels)
            for label in labels[shift:] + labels[:shift]:
                app, environ, _ = apps[label]
                times = []
                for _ in range(args.iterations):
                    started = time.perf_counter_ns()
                    Request(dict(environ)).get_response(app)
                    times.append(time.perf_counter_ns() - started)
                medians[label].append(statistics.median(times) / 1000)
    finally:
        for _, _, model in apps.values():
            model.metadata.drop_all(engine)
        engine.dispose()
    base = statistics.median(medians["kernel"][1:])
    print(f"{engine.dialect.name}: median µs per read, {args.rounds} rounds of {args.iterations}")
    for label, values in medians.items():
        value = statistics.median(values[1:])
        print(f"{label:<18}{value:9.1f}  {100 * (value - base) / base:+6.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
