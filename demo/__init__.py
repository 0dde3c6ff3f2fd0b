"""``alarm demo run``: the whole job on the bundled demo corpus, every stage for real.

1. the demo corpus (generated sounds and music, espeak-ng speech where installed) and a
   multiple-choice eval set written from its labels;
2. the offline tiny models (real classes, random weights);
3. the feature cache: the four encoders (tiny preset) on embedded Ray into a Zarr store;
4. self-rephrasing on the tiny Qwen3 (vLLM when installed, transformers otherwise) and validation;
5. adapter training (ALARM-CA fusion over the four encoders) from the cached features;
6. multiple-choice evaluation of the trained adapter (``alarm eval``);
7. one question answered by ``alarm infer`` (encoders on the fly);
8. a report of the run (``report.md``) that links every stage's own report.

Every stage reuses its cache on a second run: the store computes nothing, the passes generate
nothing, training resumes at its last step, evaluation asks no question twice.

A tiny *random* LLM cannot write an ``<answer>`` block, so validation honestly rejects every
generated target. So that the trainer still has something true to learn, the demo trains on
*reference targets* written from the corpus labels (true by construction), and says so.
"""
