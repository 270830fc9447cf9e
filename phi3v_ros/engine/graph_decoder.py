"""
A decoder CUDA graphs can capture: Phi-3-vision-128k's LongRoPE switch taken out, once.

ONNX Runtime refuses to capture a graph from a model with control flow, and onnxruntime-genai's
builder writes LongRoPE (the published model's rope_scaling: short and long factors,
original_max_position_embeddings 4096) as one If: Greater(the attention mask's length, 4096)
picks the long-factor cos/sin caches (then) or the short-factor ones (else), each branch two
Constant nodes. While prompt and answer stay within those 4096 positions the If always takes its
else branch, so a decoder whose If is replaced by the else branch's constants computes the same
logits; past them it cannot run at all (its caches end there).

prepare_for_graph() makes such a decoder in a sibling folder, <model_path>.cuda-graph:
- the user's folder is never written: every file in it but the decoder's graph and
  genai_config.json is hard-linked (no gigabytes copied; ONNX Runtime refuses external data
  reached through a symbolic link out of the model's folder), and a folder there that this module
  did not make is never touched;
- its genai_config.json says context_length 4096 (the switch's bound), and the engine refuses a
  longer request up front (bound());
- when it is made, its logits are compared with the original's over a prompt and a few greedy
  steps (a check the caller gives, run with onnxruntime-genai): not identical, not used;
- a manifest records what it was made from (each file's inode, size and modification time): a
  changed model folder makes it again;
- it is made in a temporary sibling and renamed into place, so two workers preparing at once do
  not meet half-made files.
Anything else with control flow, or a switch of another shape, is NotPreparable: the caller turns
the graph off and says why. Needs onnx (a runtime dependency), not onnxruntime-genai.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Callable, Dict, List, Optional

SUFFIX = '.cuda-graph'
MANIFEST = 'phi3v_ros_cuda_graph.json'
CONTROL_FLOW = ('If', 'Loop', 'Scan')
_VERSION = 1      # of the manifest and the transformation: another value makes the folder again


class NotPreparable(Exception):
    """The model's decoder cannot be made graph-capturable here; the text says why."""


def prepared_folder(model_path: str) -> str:
    """Return where the prepared copy of model_path lives (beside it)."""
    return os.path.abspath(model_path).rstrip(os.sep) + SUFFIX


def bound(model_path: str) -> Optional[int]:
    """Return the most tokens (prompt and answer) a prepared folder takes; None: not one."""
    try:
        with open(os.path.join(model_path, MANIFEST), encoding='utf-8') as f:
            return int(json.load(f)['bound'])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def rope_switch(graph) -> Optional[object]:
    """
    Return the decoder graph's LongRoPE If node, or None when the graph has no control flow.

    Raises NotPreparable for control flow of any other shape: an If that is not the builder's
    two-constant switch on Greater(length, N), or a Loop or Scan.
    """
    flow = [node for node in graph.node if node.op_type in CONTROL_FLOW]
    if not flow:
        return None
    if len(flow) > 1 or flow[0].op_type != 'If':
        raise NotPreparable(f"the decoder has control flow other than LongRoPE's switch: "
                            f'{", ".join(f"{n.op_type} {n.name!r}" for n in flow)}')
    switch = flow[0]
    branches = {attribute.name: attribute.g for attribute in switch.attribute}
    for name in ('then_branch', 'else_branch'):
        branch = branches.get(name)
        if branch is None or len(branch.output) != len(switch.output) or \
                any(node.op_type != 'Constant' for node in branch.node):
            raise NotPreparable(f"the decoder's If {switch.name!r} is not LongRoPE's switch "
                                f'between constant rotary caches')
    _threshold(graph, switch)
    return switch


def _threshold(graph, switch) -> int:
    """Return N of the switch's condition Greater(length, N), N read from the graph."""
    from onnx import numpy_helper
    producers = {output: node for node in graph.node for output in node.output}
    condition = producers.get(switch.input[0])
    if condition is None or condition.op_type != 'Greater':
        raise NotPreparable(f"the condition of the decoder's If {switch.name!r} is not "
                            'Greater(length, N)')
    name = condition.input[1]
    values = {tensor.name: tensor for tensor in graph.initializer}
    if name in values:
        tensor = values[name]
    elif name in producers and producers[name].op_type == 'Constant':
        tensor = next(a.t for a in producers[name].attribute if a.name == 'value')
    else:
        raise NotPreparable(f"the bound of the decoder's If {switch.name!r} is not a constant")
    value = numpy_helper.to_array(tensor)
    if value.size != 1:
        raise NotPreparable(f"the bound of the decoder's If {switch.name!r} is not one number")
    return int(value.reshape(-1)[0])


def without_switch(model):
    """Return (the model with its switch replaced by the else branch's constants, the bound)."""
    import onnx
    switch = rope_switch(model.graph)
    if switch is None:
        raise NotPreparable('the decoder has no LongRoPE switch')
    threshold = _threshold(model.graph, switch)
    branch = next(a.g for a in switch.attribute if a.name == 'else_branch')
    renamed = dict(zip((value.name for value in branch.output), switch.output))
    condition = switch.input[0]
    still_read = any(condition in node.input for node in model.graph.node
                     if node.op_type != 'If')     # (the only If is the switch)
    nodes = []
    for node in model.graph.node:
        if node.op_type == 'If':                       # the switch: its else branch's constants
            for constant in branch.node:
                copy = onnx.NodeProto()
                copy.CopyFrom(constant)
                copy.output[:] = [renamed.get(output, output) for output in copy.output]
                nodes.append(copy)
        elif condition in node.output and not still_read:
            continue                                   # the Greater that only the If read
        else:
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            nodes.append(copy)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model, threshold


def _identity(path: str) -> List[int]:
    status = os.stat(path)
    return [status.st_ino, status.st_size, status.st_mtime_ns]


def _source_files(model_path: str) -> Dict[str, List[int]]:
    files = {}
    for name in sorted(os.listdir(model_path)):
        path = os.path.join(model_path, name)
        if os.path.isdir(path):
            raise NotPreparable(f'{model_path!r} has a subfolder ({name}): only flat model '
                                'folders are prepared')
        files[name] = _identity(path)
    return files


def _is_current(folder: str, model_path: str, decoder: str) -> bool:
    """Whether folder was made by this module from model_path as it is now."""
    try:
        with open(os.path.join(folder, MANIFEST), encoding='utf-8') as f:
            manifest = json.load(f)
        if manifest.get('version') != _VERSION or manifest.get('source') != model_path:
            return False
        files = manifest['files']
        if files != _source_files(model_path):
            return False
        # the links still are the source's files (not replaced by an editor or a copy)
        return all(_identity(os.path.join(folder, name))[0] == identity[0]
                   for name, identity in files.items()
                   if name not in (decoder, 'genai_config.json'))
    except (OSError, ValueError, KeyError, TypeError, NotPreparable):
        return False


def _is_ours(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, MANIFEST))


def prepare_for_graph(model_path: str, check: Callable[[str, str], float],
                      log: Callable[[str], None] = lambda text: None) -> Optional[str]:
    """
    Return the folder to load with a CUDA graph: the prepared sibling, or None (no switch).

    check(original, prepared) compares the two folders' logits and returns the largest
    difference (raising NotPreparable where they differ). Raises NotPreparable with the reason
    when the decoder cannot be prepared here (other control flow, a read-only parent, a file
    system without hard links, logits that differ).
    """
    import onnx
    model_path = os.path.abspath(model_path).rstrip(os.sep)
    with open(os.path.join(model_path, 'genai_config.json'), encoding='utf-8') as f:
        config = json.load(f)
    decoder = config['model']['decoder']['filename']
    folder = prepared_folder(model_path)
    if _is_current(folder, model_path, decoder):     # made before (every worker start asks)
        return folder
    model = onnx.load(os.path.join(model_path, decoder),
                      load_external_data=False)      # the graph, not the weights
    if rope_switch(model.graph) is None:
        return None
    if os.path.exists(folder) and not _is_ours(folder):
        raise NotPreparable(f'{folder} exists and was not made by phi3v_ros: move it away to '
                            'let the decoder be prepared there')
    log(f"cuda_graph: the decoder has LongRoPE's If (control flow, which CUDA graphs cannot "
        f'capture): preparing one without it in {folder} (once)')
    model, threshold = without_switch(model)
    source_files = _source_files(model_path)
    work = f'{folder}.tmp-{os.getpid()}'
    try:
        _write(work, model_path, decoder, model, config, threshold, source_files)
        difference = check(model_path, work)
        _write_manifest(work, model_path, decoder, threshold, source_files, difference)
        if os.path.exists(folder):            # ours, made from an older model folder
            shutil.rmtree(folder)
        try:
            os.rename(work, folder)
        except OSError:
            if not _is_current(folder, model_path, decoder):   # another worker was first
                raise
    except OSError as exc:
        raise NotPreparable(f'the decoder could not be prepared in {folder} ({exc})') from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log(f'cuda_graph: decoder prepared in {folder}: prompt and answer together at most '
        f"{threshold} tokens; its logits equal the original's (largest difference "
        f'{difference:g})')
    return folder


def _write(work: str, model_path: str, decoder: str, model, config: dict, threshold: int,
           source_files: Dict[str, List[int]]) -> None:
    import onnx
    os.makedirs(work)
    for name in source_files:
        if name not in (decoder, 'genai_config.json'):
            try:
                os.link(os.path.join(model_path, name), os.path.join(work, name))
            except OSError as exc:
                raise NotPreparable(
                    f'the model files cannot be hard-linked into {os.path.dirname(work)} '
                    f'({exc.strerror}); copying gigabytes is not done: set cuda_graph false, or '
                    'keep the model on a file system that has hard links') from exc
    onnx.save(model, os.path.join(work, decoder))    # external data stays where it was named
    config = json.loads(json.dumps(config))
    config['model']['context_length'] = min(int(config['model'].get('context_length',
                                                                    threshold)), threshold)
    search = config.setdefault('search', {})
    search['max_length'] = min(int(search.get('max_length', threshold)), threshold)
    with open(os.path.join(work, 'genai_config.json'), 'w', encoding='utf-8') as f:
        json.dump(config, f, indent=4)


def _write_manifest(work: str, model_path: str, decoder: str, threshold: int,
                    source_files: Dict[str, List[int]], difference: float) -> None:
    manifest = {'version': _VERSION, 'source': model_path, 'decoder': decoder,
                'bound': threshold, 'files': source_files,
                'checked_max_abs_logit_difference': difference,
                'why': "LongRoPE's If replaced by its short-factor branch, for CUDA graphs; "
                       'made by phi3v_ros, safe to delete'}
    with open(os.path.join(work, MANIFEST), 'w', encoding='utf-8') as f:
        json.dump(manifest, f, indent=1)


# -- the check, with onnxruntime-genai -------------------------------------------------------

CHECK_PROMPT = ('<|user|>\nA robot looks at a table with a red cup, a blue box and a green '
                'book. Which of them is nearest to the edge, and how far is it?<|end|>\n'
                '<|assistant|>\n')
CHECK_STEPS = 8


def logits_check(og, provider: str, device_id: int = 0,
                 steps: int = CHECK_STEPS) -> Callable[[str, str], float]:
    """Return check(original, prepared) for prepare_for_graph: both run, graph off, compared."""
    import numpy as np

    def logits(folder: str) -> list:
        config = og.Config(folder)
        config.clear_providers()
        if provider == 'cuda':
            config.append_provider('cuda')
            config.set_provider_option('cuda', 'device_id', str(device_id))
        model = og.Model(config)
        inputs = model.create_multimodal_processor()(CHECK_PROMPT, images=None)
        prompt_tokens = len(og.Tokenizer(model).encode(CHECK_PROMPT))
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=prompt_tokens + steps + 1, do_sample=False)
        generator = og.Generator(model, params)
        generator.set_inputs(inputs)
        found = [np.array(generator.get_logits(), copy=True)]
        for _ in range(steps):
            generator.generate_next_token()
            found.append(np.array(generator.get_logits(), copy=True))
        del generator, model     # one model in memory at a time
        return found

    def check(original: str, prepared: str) -> float:
        reference = logits(original)
        candidate = logits(prepared)
        difference = max(float(np.max(np.abs(a - b))) for a, b in zip(reference, candidate))
        if len(reference) != len(candidate) or difference != 0.0:
            raise NotPreparable(f"the prepared decoder's logits differ from the original's "
                                f'(by up to {difference:g}): not used')
        return difference

    return check
