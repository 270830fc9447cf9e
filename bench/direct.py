"""The baseline: the engine called directly, in one plain process (what a user's own script does).

The process is spawned once, loads the same model with the same settings as the node's worker, keeps
the frames it is given (RGB, handed over before any timing) and answers ('generate', ...) commands with
the time the generation took in it: from the call of Engine.generate to its return, and to the first
streamed piece. No ROS is imported there.
"""
from __future__ import annotations

import multiprocessing
import os
import time
from typing import Dict


def _serve(conn, model_path: str, max_image_side: int, image_format: str) -> None:
    from phi3v_ros.engine.engine import Engine, EngineConfig
    from phi3v_ros.engine.generation import GenerationSettings, Request
    from phi3v_ros.engine.worker import _warm_up

    engine = Engine(EngineConfig(model_path=model_path, provider='cpu', max_image_side=max_image_side,
                                 image_format=image_format))
    _warm_up(engine)   # the node's worker warms up the same way
    frames = {}
    conn.send(('ready', os.getpid()))
    while True:
        message = conn.recv()
        if message[0] == 'stop':
            return
        if message[0] == 'frame':
            frames[message[1]] = message[2]
            conn.send(('ok',))
            continue
        _, key, prompt, max_new_tokens = message
        image = None if key is None else frames[key]
        first = []

        def on_piece(piece: str) -> None:
            if not first:
                first.append(time.monotonic())
        request = Request(prompt=prompt, images=(image,), settings=GenerationSettings(max_new_tokens=max_new_tokens))
        start = time.monotonic()
        result = engine.generate(request, on_piece=on_piece)
        end = time.monotonic()
        conn.send(('result', {
            'total_s': end - start, 'first_piece_s': (first[0] - start) if first else float('nan'),
            'engine_ttft_s': result.time_to_first_token_s, 'engine_total_s': result.total_s,
            'image_prepare_s': result.image_prepare_s, 'tokens': result.generated_tokens,
            'prompt_tokens': result.prompt_tokens, 'max_length': result.max_length,
            'text': result.text, 'error': result.error, 'tokens_per_s': result.decode_tokens_per_s}))


class DirectEngine:
    def __init__(self, model_path: str, max_image_side: int = 1344, image_format: str = 'png') -> None:
        context = multiprocessing.get_context('spawn')
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(child, model_path, max_image_side, image_format),
                                        name='bench-direct-engine', daemon=True)
        self._process.start()
        child.close()
        kind, self.pid = self._conn.recv()
        assert kind == 'ready'

    def load_frame(self, key: str, rgb) -> None:
        self._conn.send(('frame', key, rgb))
        self._conn.recv()

    def generate(self, key, prompt: str, max_new_tokens: int) -> Dict[str, object]:
        self._conn.send(('generate', key, prompt, max_new_tokens))
        kind, result = self._conn.recv()
        return result

    def close(self) -> None:
        try:
            self._conn.send(('stop',))
        except OSError:
            pass
        self._process.join(5)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(5)
