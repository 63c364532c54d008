"""The deprecated import paths kept for one release give the new modules, with a warning."""

from __future__ import annotations

import subprocess
import sys
import textwrap

_CHECK = textwrap.dedent(
    """
    import sys
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import lumbarssl.data.synthetic as old
        import lumbarssl.data.synthetic.config as old_config
        from lumbarssl.data.synthetic.generate import generate_dataset
        from lumbarssl.data.synthetic import SyntheticConfig, plan

    import lumbarssl.synthetic as new
    import lumbarssl.synthetic.config as new_config
    import lumbarssl.synthetic.generate as new_generate
    import lumbarssl.synthetic.plan as new_plan

    assert old_config is new_config, (old_config, new_config)
    assert sys.modules["lumbarssl.data.synthetic.config"] is new_config
    assert generate_dataset is new_generate.generate_dataset
    assert SyntheticConfig is new.SyntheticConfig is old.SyntheticConfig
    assert plan is new_plan
    assert old.GENERATOR_VERSION == new.GENERATOR_VERSION
    deprecations = [w for w in caught if issubclass(w.category, DeprecationWarning)]
    assert len(deprecations) == 1, [str(w.message) for w in caught]
    message = str(deprecations[0].message)
    assert "lumbarssl.data.synthetic is deprecated" in message, message
    assert "import lumbarssl.synthetic instead" in message, message
    try:
        import lumbarssl.data.synthetic.no_such_module  # noqa: F401
    except ModuleNotFoundError:
        pass
    else:
        raise AssertionError("a missing submodule imported")
    try:
        old.no_such_name  # noqa: B018
    except AttributeError:
        pass
    else:
        raise AssertionError("a missing attribute resolved")
    print("ok")
    """
)


def test_data_synthetic_is_a_deprecated_alias_of_lumbarssl_synthetic() -> None:
    # A fresh interpreter: the alias must be the first import of the old name.
    done = subprocess.run(
        [sys.executable, "-c", _CHECK], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
