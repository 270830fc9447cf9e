"""
Parts of ``build_genai_wheel``: one concern per module.

- ``platform``: what the machine is (Jetson release, CUDA, GPU, Python, compilers, memory),
  read through an injectable ``Probe`` so that tests point it at fixture trees and fake command
  outputs.
- ``versions``: the table of onnxruntime-genai releases, the ONNX Runtime each needs, and the
  JetPack table.
- ``checks``: prerequisite checks, each failure with the fix.
- ``ort_libs``: finding ONNX Runtime GPU libraries and headers and gathering them into ``ort/``.
- ``download``: downloads verified against pinned sha256 sums.
- ``plan``: the pure planner (platform + options -> steps) and the ``--dry-run`` rendering.
- ``runner``: executing a plan with a resumable state file, logs and progress.
- ``failures``: known build failures, how to recognise them in a log, and the fix.
"""
