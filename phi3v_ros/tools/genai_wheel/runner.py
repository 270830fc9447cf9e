"""
Executing a plan.

A state file for resuming, a log per step, the build's progress, failure hints.
"""
from __future__ import annotations

from dataclasses import dataclass, field
import json
import os
from pathlib import Path
import re
import shutil
import subprocess
import time
from typing import Callable, Dict, List, Mapping, Optional, Sequence

from . import cross
from . import cuda_libs
from . import download as dl
from . import gpu_code
from . import local_sources
from . import prebuilt
from .failures import match_failures
from .ort_libs import from_folder, gather, inspect, OrtError, verify_ort_home
from .plan import Plan, Step
from .platform import CommandResult, run_command
from .versions import ort_api_version

STATE_VERSION = 1


class StepError(RuntimeError):
    """A step failed; the message says why and what to do."""


class State:
    """
    Which steps are done, kept in ``<work>/state.json`` so that a rerun resumes.

    A state written for another plan (other versions, GPU, CUDA or Python) is discarded.
    """

    def __init__(self, path: Path, key: str):
        self.path = Path(path)
        self.key = key
        self.done: List[str] = []
        self.data: Dict[str, str] = {}
        self.resumed = False
        try:
            saved = json.loads(self.path.read_text())
        except (OSError, ValueError):
            saved = None
        if isinstance(saved, dict) and saved.get('key') == key and \
                saved.get('version') == STATE_VERSION:
            self.done = list(saved.get('done', []))
            self.data = dict(saved.get('data', {}))
            self.resumed = bool(self.done)

    def reset(self) -> None:
        self.done, self.data, self.resumed = [], {}, False
        self.save()

    def mark_done(self, step_id: str) -> None:
        if step_id not in self.done:
            self.done.append(step_id)
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + '.tmp')
        tmp.write_text(json.dumps({'version': STATE_VERSION, 'key': self.key, 'done': self.done,
                                   'data': self.data}, indent=1))
        tmp.replace(self.path)


CommandRunner = Callable[[Sequence[str], Optional[str], Mapping[str, str], Optional[str],
                          Optional[Callable[[str], None]]], int]


def expand_env(env: Mapping[str, str], base: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """
    Return the step's environment over the current one.

    '$PATH' etc. in values refer to the current ones.
    """
    base = dict(os.environ if base is None else base)
    merged = dict(base)
    for key, value in env.items():
        merged[key] = re.sub(r'\$(\w+)', lambda m: base.get(m.group(1), ''), value).rstrip(':')
    return merged


def run_streaming(argv: Sequence[str], cwd: Optional[str], env: Mapping[str, str],
                  log: Optional[str], on_line: Optional[Callable[[str], None]] = None) -> int:
    """Run a command, appending its output to the log file and handing each line to on_line."""
    handle = open(log, 'a', encoding='utf-8') if log else None
    try:
        if handle:
            handle.write(f'\n$ {" ".join(argv)}\n')
            handle.flush()
        try:
            process = subprocess.Popen(list(argv), cwd=cwd, env=expand_env(env),
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       text=True, errors='replace', bufsize=1)
        except OSError as exc:
            if handle:
                handle.write(f'could not start: {exc}\n')
            return 127
        assert process.stdout is not None
        try:
            for line in process.stdout:
                if handle:
                    handle.write(line)
                if on_line:
                    on_line(line.rstrip('\n'))
            return process.wait()
        except KeyboardInterrupt:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
            raise
    finally:
        if handle:
            handle.close()


class Progress:
    """
    Turns build output into short progress lines.

    They give the make/ninja percentage, at most every few seconds.
    """

    PERCENT = re.compile(r'^\[\s*(\d+)%\]')
    NINJA = re.compile(r'^\[(\d+)/(\d+)\]')

    def __init__(self, out: Callable[[str], None], clock: Callable[[], float] = time.monotonic,
                 every: float = 5.0):
        self.out, self.clock, self.every = out, clock, every
        self.start = clock()
        self.last_percent = -1
        self.last_time = -every

    def __call__(self, line: str) -> None:
        match = self.PERCENT.match(line)
        percent = int(match.group(1)) if match else None
        if percent is None:
            match = self.NINJA.match(line)
            if match and int(match.group(2)):
                percent = int(100 * int(match.group(1)) / int(match.group(2)))
        if percent is None or percent == self.last_percent:
            return
        now = self.clock()
        if percent < 100 and now - self.last_time < self.every:
            return
        self.last_percent, self.last_time = percent, now
        minutes = (now - self.start) / 60
        self.out(f'      build {percent:3d}%  ({minutes:.0f} min)')


@dataclass
class Context:
    out: Callable[[str], None] = print
    run: CommandRunner = run_streaming
    capture: Callable[[Sequence[str]], CommandResult] = run_command
    opener: Callable = None
    restart: bool = False
    clock: Callable[[], float] = time.monotonic
    messages: List[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------- actions

def action_clone(step: Step, ctx: Context, state: State) -> None:
    p = step.params
    dest, commit = Path(p['dest']), p['commit']
    if (dest / '.git').exists():
        head = ctx.capture(['git', '-C', str(dest), 'rev-parse', 'HEAD'])
        if head.returncode == 0 and head.stdout.strip() == commit:
            ctx.out(f'      {dest} is already at {commit}')
            return
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    rc = ctx.run(['git', 'clone', '--branch', p['tag'], '--depth', '1', '--single-branch',
                  p['url'], str(dest)], None, {}, p.get('log'), None)
    if rc != 0:
        raise StepError(f'git clone of {p["url"]} (tag {p["tag"]}) failed: see {p.get("log")}')
    head = ctx.capture(['git', '-C', str(dest), 'rev-parse', 'HEAD'])
    actual = head.stdout.strip()
    if actual != commit:
        raise StepError(f'tag {p["tag"]} of {p["url"]} is at {actual or "?"}, not the pinned '
                        f'{commit}: the tag moved, so the source is not the one this table was '
                        'checked against; do not build it, '
                        f'or pass --genai-commit {actual} if you trust it')


def action_check_source(step: Step, ctx: Context, state: State) -> None:
    src = Path(step.params['dir'])
    try:
        local_sources.check_source(src, step.params['version'])
    except local_sources.LocalSourceError as exc:
        raise StepError(str(exc)) from exc
    head = ctx.capture(['git', '-C', str(src), 'rev-parse', 'HEAD']) \
        if (src / '.git').exists() else None
    commit = head.stdout.strip() if head is not None and head.returncode == 0 else None
    ctx.out(f'      onnxruntime-genai {step.params["version"]} at {src}'
            + (f' (git commit {commit})' if commit else ' (not a git checkout)'))


def action_check_deps(step: Step, ctx: Context, state: State) -> None:
    deps_dir = Path(step.params['deps_dir'])
    deps = local_sources.required_dependencies(Path(step.params['source']), deps_dir)
    missing = local_sources.missing_dependencies(deps, deps_dir)
    if missing:
        raise StepError('the offline build needs these folders: '
                        + '; '.join(local_sources.describe_missing(missing, deps_dir)))
    ctx.out(f'      {len(deps)} dependencies, all in {deps_dir}: '
            + ', '.join(d.folder for d in deps))


def action_gather_cuda_libs(step: Step, ctx: Context, state: State) -> None:
    p = step.params
    found = ctx.capture([p['python'], '-c', cuda_libs.NVIDIA_PATHS_CODE])
    roots = cuda_libs.site_packages_from(found.returncode, found.stdout)
    try:
        taken = cuda_libs.gather(cuda_libs.nvidia_folders(roots, p['cuda_major']),
                                 Path(p['dest']), Path(p['cuda']), p['cuda_major'])
    except cuda_libs.CudaLibsError as exc:
        raise StepError(str(exc)) from exc
    for name, origin in taken.items():
        ctx.out(f'      {name} <- {origin}')


def action_gather_ort(step: Step, ctx: Context, state: State) -> None:
    p = step.params
    try:
        if p['kind'] == 'python':
            source = inspect('python', p['origin'], Path(p['lib_dir']), None)
        else:
            source = from_folder(Path(p['lib_dir']).parent, p['origin']) \
                if not Path(p['lib_dir']).is_dir() \
                else inspect(p['kind'], p['origin'], Path(p['lib_dir']),
                             Path(p['header_dir']) if p.get('header_dir') else None)
        if source.version and ort_api_version(source.version) < p['min_api']:
            raise StepError(f'ONNX Runtime {source.version} from {source.origin} is older than '
                            f'the C API {p["min_api"]} this onnxruntime-genai needs: use '
                            f'onnxruntime-gpu 1.{p["min_api"]} or newer, '
                            'or an older --genai-version')
        for line in gather(source, Path(p['dest']),
                           need_cuda_provider=p.get('need_cuda_provider', True)):
            ctx.out(f'      {line}')
    except OrtError as exc:
        raise StepError(str(exc)) from exc


def action_copy_headers(step: Step, ctx: Context, state: State) -> None:
    src, dest = Path(step.params['src']), Path(step.params['dest'])
    headers = list(src.glob('*.h')) or list((src / 'onnxruntime' / 'core' / 'session').glob('*.h'))
    if not any(h.name == 'onnxruntime_c_api.h' for h in headers):
        raise StepError(f'{src} has no onnxruntime_c_api.h: give --ort-headers the include folder '
                        'of an ONNX Runtime release '
                        '(or include/onnxruntime/core/session of its source)')
    dest.mkdir(parents=True, exist_ok=True)
    for header in headers:
        shutil.copy2(header, dest / header.name)


def action_fetch_headers(step: Step, ctx: Context, state: State) -> None:
    p = step.params
    kwargs = {'opener': ctx.opener} if ctx.opener else {}
    try:
        archive = dl.download(p['url'], Path(p['archive']), p['sha256'], **kwargs)
        names = dl.extract_headers(archive, Path(p['dest']))
    except dl.DownloadError as exc:
        raise StepError(str(exc)) from exc
    ctx.out(f'      {len(names)} headers verified and extracted')


def action_check_ort_home(step: Step, ctx: Context, state: State) -> None:
    try:
        api = verify_ort_home(Path(step.params['dest']), need_headers=True,
                              min_api=step.params['min_api'],
                              need_cuda_provider=step.params.get('need_cuda_provider', True))
    except OrtError as exc:
        raise StepError(str(exc)) from exc
    ctx.out(f'      ok: C API {api}')


def action_collect_wheel(step: Step, ctx: Context, state: State) -> None:
    folder, dest = Path(step.params['dir']), Path(step.params['dest'])
    wheels = sorted(folder.glob('onnxruntime_genai*.whl'), key=lambda w: w.stat().st_mtime)
    if not wheels:
        raise StepError(f'the build finished but left no onnxruntime_genai*.whl in {folder}: '
                        'see the build log')
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / wheels[-1].name
    shutil.copy2(wheels[-1], target)
    state.data['wheel'] = str(target)
    ctx.out(f'      {target}  sha256 {dl.sha256_file(target)}')


def action_write_file(step: Step, ctx: Context, state: State) -> None:
    path = Path(step.params['path'])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(step.params['text'])


def action_check_cross_wheel(step: Step, ctx: Context, state: State) -> None:
    """Read the cross-built wheel as a Jetson would load it; any problem fails the step."""
    wheel = Path(state.data.get('wheel', ''))
    if not wheel.is_file():
        raise StepError('no wheel was collected: run the build steps again (--restart)')
    cc = step.params['compute_capability']
    try:
        reports = cross.read_wheel(wheel, cc)
    except (cross.CrossError, OSError, ValueError) as exc:
        raise StepError(f'{wheel.name} could not be read: {exc}') from exc
    for line in cross.render_reports(reports):
        ctx.out(f'      {line}')
    problems = cross.wheel_problems(wheel, reports, cc, step.params['python'])
    if problems:
        raise StepError('the wheel would not run on a JetPack 6 Jetson: ' + '; '.join(problems))
    ctx.out('      ok: aarch64, JetPack 6 libraries only, Ubuntu 22.04 symbol versions, '
            f'GPU code for sm_{cc}')


def action_prebuilt(step: Step, ctx: Context, state: State) -> None:
    """Find, download, verify and check a prebuilt wheel; any StepError means: build instead."""
    p = step.params
    kwargs = {'opener': ctx.opener} if ctx.opener else {}
    untrusted = None if p['sha256'] else prebuilt.untrusted_index(p['index'])
    if untrusted:
        raise StepError(untrusted)
    found = prebuilt.look_up(p['index'], p['python_tag'], p['machine'], p['wanted'],
                             p['runtime_ort'], **kwargs)
    if found.status != 'found':
        raise StepError(('the index is down: ' if found.status == 'down' else '') + found.reason)
    candidate = found.candidate
    ctx.out(f'      found {found.reason}')
    if p['sha256'] and candidate.sha256 and p['sha256'] != candidate.sha256:
        raise StepError(f'the index gives sha256 {candidate.sha256} for {candidate.file_name}, '
                        f'not the --prebuilt-sha256 {p["sha256"]}')
    sha = p['sha256'] or candidate.sha256
    if not sha:
        raise StepError(f'the index gives no sha256 for {candidate.file_name}: pass '
                        '--prebuilt-sha256 to pin the one you trust')
    if candidate.size is not None:
        bound = {'max_bytes': candidate.size,
                 'bound': f'the {candidate.size} bytes the index gives'}
    else:
        bound = {'max_bytes': prebuilt.MAX_WHEEL_BYTES}
    try:
        target = dl.inside(Path(p['dir']), candidate.file_name)
        ctx.out(f'      from {candidate.url}')
        wheel = dl.download(candidate.url, target, sha, **kwargs, **bound)
    except dl.DownloadError as exc:
        raise StepError(str(exc)) from exc
    try:
        ctx.out(f'      {gpu_code.check_wheel(wheel, p["compute_capability"])}')
    except ValueError as exc:   # what the reader says of a wheel it could read
        raise StepError(f'refused: {exc}') from exc
    except Exception as exc:  # noqa: BLE001 - whatever a broken wheel makes the reader raise
        raise StepError(f'refused: the wheel could not be read ({type(exc).__name__}: {exc})') \
            from exc
    dest = Path(p['dest'])
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / wheel.name
    shutil.copy2(wheel, target)
    state.data['wheel'] = str(target)
    state.data['prebuilt'] = '1'
    ctx.out(f'      {target}  sha256 {sha}')


ACTIONS = {
    'clone': action_clone,
    'check_source': action_check_source,
    'check_deps': action_check_deps,
    'gather_cuda_libs': action_gather_cuda_libs,
    'gather_ort': action_gather_ort,
    'copy_headers': action_copy_headers,
    'fetch_headers': action_fetch_headers,
    'check_ort_home': action_check_ort_home,
    'collect_wheel': action_collect_wheel,
    'prebuilt': action_prebuilt,
    'write_file': action_write_file,
    'check_cross_wheel': action_check_cross_wheel,
}


# --------------------------------------------------------------------------------------- execution

def _log_size(path: Optional[str]) -> int:
    try:
        return os.path.getsize(path) if path else 0
    except OSError:
        return 0


def _log_since(path: Optional[str], offset: int) -> str:
    """
    Return what the log got from byte offset on: this run's output of the step.

    Logs are appended to across runs (the earlier attempts stay readable), so the hints of an
    earlier failure, fixed since, must not be matched again.
    """
    if not path:
        return ''
    try:
        with open(path, 'rb') as f:
            f.seek(offset)
            return f.read().decode('utf-8', errors='replace')
    except OSError:
        return ''


def _substitute(argv: Sequence[str], state: State) -> List[str]:
    wheel = state.data.get('wheel', '{wheel}')
    return [wheel if part == '{wheel}' else part for part in argv]


def run_step(step: Step, ctx: Context, state: State) -> None:
    if step.action:
        ACTIONS[step.action](step, ctx, state)
        return
    assert step.argv is not None
    if step.log:
        Path(step.log).parent.mkdir(parents=True, exist_ok=True)
    on_line = Progress(ctx.out, ctx.clock) if step.progress else None
    rc = ctx.run(_substitute(step.argv, state), step.cwd, step.env, step.log, on_line)
    if rc != 0:
        raise StepError(f'exit status {rc}' + (f'; log: {step.log}' if step.log else ''))


def execute(plan: Plan, ctx: Context) -> int:
    """
    Run the plan's steps in order, skipping those a previous run completed.

    Returns an exit status.
    """
    state = State(plan.work_dir / 'state.json', plan.key)
    if ctx.restart:
        state.reset()
    elif state.resumed:
        ctx.out(f'resuming: {len(state.done)} steps were done by a previous run '
                f'({plan.work_dir / "state.json"})')
    total = len(plan.steps)
    prebuilt_failed = False
    for number, step in enumerate(plan.steps, 1):
        head = f'[{number}/{total}] {step.title}'
        if step.phase == 'prebuilt' and prebuilt_failed:
            continue
        if state.data.get('prebuilt') and step.phase in ('tools', 'source', 'ort', 'build') \
                and step.id != 'workdir':
            ctx.out(f'{head}: not needed (the prebuilt wheel is used)')
            continue
        if step.id in state.done and not step.always:
            ctx.out(f'{head}: done before, skipped')
            continue
        ctx.out(head)
        started = ctx.clock()
        log_start = _log_size(step.log)
        try:
            run_step(step, ctx, state)
        except KeyboardInterrupt:
            state.save()
            ctx.out(f'interrupted during "{step.id}": '
                    'run the same command again to resume from this step')
            return 130
        except Exception as exc:  # noqa: BLE001 - a step with a fallback never ends the run
            if not isinstance(exc, StepError) and not step.fallback:
                raise
            if step.fallback:
                why = exc if isinstance(exc, StepError) else f'{type(exc).__name__}: {exc}'
                prebuilt_failed = True
                state.data.pop('prebuilt', None)
                state.data.pop('wheel', None)
                ctx.out(f'      prebuilt wheel not usable ({why}); building from source instead')
                continue
            if step.allow_fail:
                ctx.out(f'      (failed, which is fine here: {exc})')
                state.mark_done(step.id)
                continue
            state.save()
            ctx.out(f'FAILED: {step.title}: {exc}')
            log_text = _log_since(step.log, log_start)
            tail = '\n'.join(log_text.splitlines()[-25:])
            if tail.strip():
                ctx.out(f'--- last lines of {step.log} ---\n{tail}\n---')
            for failure in match_failures(log_text + '\n' + str(exc)):
                ctx.out(f'known problem: {failure.symptom}\n  fix: {failure.fix}')
            ctx.out('after fixing it, run the same command again: completed steps are skipped')
            return 1
        elapsed = ctx.clock() - started
        if elapsed >= 60:
            ctx.out(f'      done in {elapsed / 60:.1f} min')
        state.mark_done(step.id)
    return 0
