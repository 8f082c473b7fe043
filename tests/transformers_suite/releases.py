"""What transformers' own model tests need under one release of the matrix and not under another: the one place.

`EXPECTED_FAILURES[release][test name]` is the reason a test of that release's files fails for a bug of the release
itself (not of MMFuser-LLaVA, whose bugs are fixed in the model), naming the release and the cause; conftest.py marks
it a strict xfail under that release only, so a run that passes tells that the entry is stale. Skips are
transformers' own, with its reasons, and are not listed here.

Today no release needs an entry: the 8 releases of the matrix pass (docs/transformers-versions.md). Two differences
between releases that needed no entry: under 5.24.0 Llava's `forward` passes a caller's `output_hidden_states=[...]`
(meant for the language model) down to `get_image_features`, where it would have starved the fuser of its layers
(MMFuser now widens the selection to them; transformers' own Llava fails there); 5.19.0's
`test_model_rope_scaling_frequencies` skips every model whose RoPE module takes `config` alone ("This model has no
standardized RoPE module found.": it asks for more than one parameter besides `self`), which 5.20 fixed.
The stand-ins for files no sdist has are the same for every release (generation/, exporters/, utils/).
"""

EXPECTED_FAILURES: dict[str, dict[str, str]] = {}
