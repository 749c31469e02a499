"""The features guide's examples, one module per plugin; tests/test_docs_examples.py runs each.

Each module has the model (on a declarative ``Base`` of its own, as your
``models/meta.py`` would give) and an ``includeme`` with its views; the ini
settings are in ``features.ini``, one section per module.
"""
