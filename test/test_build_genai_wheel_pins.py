"""
The dependencies the builder pins for the releases it builds offline, and their fingerprints.

``local_sources.RELEASE_DEPENDENCIES`` lists, for onnxruntime-genai 0.9.2 and 0.11.4, every
folder an offline Linux CUDA build needs, with the fingerprint of its content: the dry run lists
them before the source tree is there, and a folder of another version is an error. Where the
git mirrors of the repositories are on this machine, the table is checked against them.
"""
import dataclasses
import os
from pathlib import Path
import shutil
import subprocess

from phi3v_ros.tools.genai_wheel import local_sources as ls
from phi3v_ros.tools.genai_wheel.checks import check_local_sources
import pytest
from test_build_genai_wheel_local import desktop, genai_tree, run
from test_build_genai_wheel_ort import fake_ort_release

MIRRORS = Path(os.environ.get('PHI3V_GIT_MIRRORS', '/work/.mirror'))
FOLDERS = ('pybind11', 'googletest', 'onnxruntime_extensions', 'gsl', 'dlib', 'dr_libs',
           'nlohmann_json')
GIT = shutil.which('git')
needs_git = pytest.mark.skipif(GIT is None, reason='git is not installed')


def release_deps_txt(version):
    """Return a cmake/deps.txt as the release has it (with the entries Linux does not use)."""
    rows = [f'{dep.folder};{dep.url};{dep.pin}'
            for dep in ls.RELEASE_DEPENDENCIES[version].genai]
    rows.insert(2, 'microsoft_wil;https://github.com/microsoft/wil/archive/v1.zip;e4a5')
    return '#Name;Url;SHA1\n' + '\n'.join(rows) + '\nllguidance;https://x.invalid/l.git;94fa\n'


def release_tree(root, version):
    return genai_tree(root, version, release_deps_txt(version))


def git(*args, cwd=None):
    return subprocess.run(['git', *args], cwd=cwd, check=True, capture_output=True,
                          text=True).stdout


def git_repo(path, files):
    """Make a git repository at ``path`` holding ``files`` (path -> text) in one commit."""
    path.mkdir(parents=True)
    git('init', '-q', str(path))
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    git('-c', 'user.name=t', '-c', 'user.email=t@t', '-C', str(path), 'add', '-A')
    git('-c', 'user.name=t', '-c', 'user.email=t@t', '-C', str(path), 'commit', '-qm', 'one')
    return git('-C', str(path), 'rev-parse', 'HEAD').strip()


# --------------------------------------------------------------------------- before the source

def test_a_pinned_release_lists_every_folder_before_the_source_exists(tmp_path):
    deps = tmp_path / 'deps'
    source_problem, problem = check_local_sources(tmp_path / 'not-yet', deps, '0.9.2')
    assert 'is not an onnxruntime-genai source tree' in source_problem.what
    assert problem.level == 'error' and '7 of the 7 dependencies' in problem.what
    assert "the list is onnxruntime-genai 0.9.2's, pinned in the builder" in problem.fix
    for folder in FOLDERS:
        assert f'{deps / folder}/  <- ' in problem.fix
    assert f'$ git clone https://github.com/microsoft/onnxruntime-extensions.git ' \
           f'{deps}/onnxruntime_extensions && git -C {deps}/onnxruntime_extensions checkout ' \
           'bd8fb6d86e98c17e397c42fc001913cc2e035597' in problem.fix
    assert f'$ curl -fL -o /tmp/dr_libs.zip https://github.com/mackron/dr_libs/archive/' \
           '660795b2834aebb2217c9849d668b6e4bd4ef810.zip && unzip -qo /tmp/dr_libs.zip -d ' \
           f'{deps}/dr_libs.tmp && mv -T {deps}/dr_libs.tmp/* {deps}/dr_libs && rmdir ' \
           f'{deps}/dr_libs.tmp' in problem.fix
    assert f'{deps}/pybind11/CMakeLists.txt must exist, not one level deeper' in problem.fix
    assert 'listed once' not in problem.fix
    (problem,) = check_local_sources(tmp_path / 'not-yet', None, '0.11.4')
    assert 'is not an onnxruntime-genai source tree' in problem.what


def test_the_dry_run_lists_them_in_one_pass(tmp_path):
    ort = fake_ort_release(tmp_path / 'ort-rel')
    deps = tmp_path / 'deps'
    status, text = run(['--dry-run', '--non-jetson', '--cuda-arch', '89', '--source',
                        str(tmp_path / 'src'), '--deps-dir', str(deps), '--ort-source', str(ort),
                        '--work-dir', str(tmp_path / 'w'), '--genai-version', '0.9.2'],
                       desktop(tmp_path / 'a'))
    assert status == 0, text
    assert '7 of the 7 dependencies an offline build needs are not in' in text
    for folder in FOLDERS:
        assert f'{deps / folder}/  <- ' in text
    assert text.count('$ curl -fL') == 6 and text.count('$ git clone') == 1


def test_with_the_source_and_no_extensions_folder_its_dependencies_come_from_the_table(
        tmp_path):
    for version in ('0.9.2', '0.11.4'):
        source = release_tree(tmp_path / version, version)
        assert ls.release_differences(source, version) == []
        found = ls.required_dependencies(source, tmp_path / 'empty')
        assert found == ls.RELEASE_DEPENDENCIES[version].every
        (problem,) = check_local_sources(source, tmp_path / 'empty', version)
        assert '7 of the 7' in problem.what and 'pinned in the builder' not in problem.fix


def test_a_source_whose_deps_txt_is_not_the_release_is_an_error(tmp_path):
    source = genai_tree(tmp_path / 'src', '0.9.2')      # made-up pins
    differs, missing = check_local_sources(source, tmp_path / 'empty', '0.9.2')
    assert differs.level == 'error'
    assert "says it is onnxruntime-genai 0.9.2, but its cmake/deps.txt is not that release's" \
        in differs.what
    assert 'googletest: https://github.com/google/googletest/archive/530d.zip (5e3a); 0.9.2 ' \
           'has https://github.com/google/googletest/archive/530d5c8c84abd2a46f38583ee817743c' \
           '9b3a42b4.zip (5e3a61db2aa975cfd0f97ba92c818744e7fa7034)' in differs.what
    assert 'unchanged checkout or extracted archive of the v0.9.2 tag' in differs.fix
    # its onnxruntime-extensions commit is not the release's: that one's are not assumed
    assert '3 of the 3' in missing.what and 'listed once' in missing.fix


def test_a_release_not_in_the_table_is_read_as_before(tmp_path):
    assert ls.release_dependencies('0.10.0') is None
    assert ls.required_dependencies(tmp_path / 'not-yet', tmp_path / 'deps', '0.10.0') == []
    (problem,) = check_local_sources(tmp_path / 'not-yet', tmp_path / 'deps', '0.10.0')
    assert 'is not an onnxruntime-genai source tree' in problem.what


# ------------------------------------------------------------------------------- fingerprints

@needs_git
def test_an_archive_and_a_checkout_of_one_commit_share_the_fingerprint(tmp_path):
    checkout = tmp_path / 'checkout'
    git_repo(checkout, {'CMakeLists.txt': 'project(x)\n', 'include/x.h': '#pragma once\n',
                        'docs/a b.md': 'text\n'})
    (checkout / 'link.h').symlink_to('include/x.h')
    git('-c', 'user.name=t', '-c', 'user.email=t@t', '-C', str(checkout), 'add', 'link.h')
    git('-c', 'user.name=t', '-c', 'user.email=t@t', '-C', str(checkout), 'commit', '-qm', '2')
    extracted = tmp_path / 'extracted'
    extracted.mkdir()
    archive = subprocess.run(['git', '-C', str(checkout), 'archive', 'HEAD'], check=True,
                             capture_output=True).stdout
    subprocess.run(['tar', 'x', '-C', str(extracted)], input=archive, check=True)
    assert (extracted / 'link.h').is_symlink()
    expected = ls.fingerprint(extracted)
    assert ls.fingerprint(checkout) == expected
    # what the pins are computed from where a mirror lacks some file contents
    tree = git('-C', str(checkout), 'ls-tree', '-r', 'HEAD')
    listed = [line.split('\t') for line in tree.splitlines()]
    assert ls.combine_fingerprint([(path, meta.split()[2]) for meta, path in listed]) == expected
    # an empty folder is no file: an archive may have one where a checkout has none
    (checkout / 'build').mkdir()
    assert ls.fingerprint(checkout) == expected
    (checkout / 'include' / 'x.h').write_text('#pragma once  // changed\n')
    changed = ls.fingerprint(checkout)
    (checkout / 'include' / 'x.h').write_text('#pragma once\n')
    (checkout / 'extra.txt').write_text('')
    assert len({expected, changed, ls.fingerprint(checkout)}) == 3


def fake_deps(root, folders=FOLDERS):
    for folder in folders:
        (root / folder).mkdir(parents=True)
        (root / folder / 'CMakeLists.txt').write_text(f'project({folder})  # another version\n')
    return root


def test_a_folder_of_another_version_is_an_error_naming_the_version_and_the_fix(tmp_path):
    deps = fake_deps(tmp_path / 'deps')
    problems = check_local_sources(tmp_path / 'not-yet', deps, '0.9.2')[1:]
    assert [p.level for p in problems] == ['error'] * 7
    (dlib,) = [p for p in problems if p.what.startswith(f'{deps / "dlib"} ')]
    assert f'{deps / "dlib"} is not dlib v19.24.7 (commit ' \
           'd3520131a6e0e0fb62bc556b0222b45d99caf905): its files differ' in dlib.what
    assert dlib.fix.startswith(f'move {deps / "dlib"} away, then: curl -fL -o /tmp/dlib.zip '
                               'https://github.com/davisking/dlib/archive/refs/tags/'
                               'v19.24.7.zip && ')
    assert 'git says' not in dlib.what


def test_an_archive_extracted_one_level_too_deep_is_named(tmp_path):
    deps = tmp_path / 'deps'
    (deps / 'gsl' / 'GSL-4.0.0').mkdir(parents=True)
    (deps / 'gsl' / 'GSL-4.0.0' / 'CMakeLists.txt').write_text('project(GSL)\n')
    problems = check_local_sources(tmp_path / 'not-yet', deps, '0.9.2')
    (gsl,) = [p for p in problems if p.what.startswith(f'{deps / "gsl"} ')]
    assert f'it holds only the folder GSL-4.0.0/, whose contents belong directly in it ' \
           f'({deps}/gsl/CMakeLists.txt)' in gsl.what


@needs_git
def test_a_git_checkout_of_another_commit_says_which_commit_it_is(tmp_path):
    deps = tmp_path / 'deps'
    head = git_repo(deps / 'onnxruntime_extensions', {'CMakeLists.txt': 'project(ocos)\n'})
    problems = check_local_sources(tmp_path / 'not-yet', deps, '0.11.4')
    (ext,) = [p for p in problems if p.what.startswith(f'{deps / "onnxruntime_extensions"} ')]
    assert 'is not onnxruntime_extensions 9f1f67d6d075793a0828b24e73d50803eb657e9a' in ext.what
    assert f'git says it is at {head}' in ext.what
    assert ext.fix.startswith(f'git -C {deps}/onnxruntime_extensions checkout '
                              '9f1f67d6d075793a0828b24e73d50803eb657e9a, with no changed or '
                              'extra files')
    assert 'then: git clone https://github.com/microsoft/onnxruntime-extensions.git' in ext.fix


def test_folders_of_the_pinned_content_pass(tmp_path, monkeypatch):
    deps = fake_deps(tmp_path / 'deps')
    pinned = ls.RELEASE_DEPENDENCIES['0.9.2']

    def as_found(dep):
        return dataclasses.replace(dep, fingerprint=ls.fingerprint(deps / dep.folder))

    monkeypatch.setitem(ls.RELEASE_DEPENDENCIES, '0.9.2', ls.ReleaseDependencies(
        tuple(map(as_found, pinned.genai)), tuple(map(as_found, pinned.extensions))))
    (source_problem,) = check_local_sources(tmp_path / 'not-yet', deps, '0.9.2')
    assert 'is not an onnxruntime-genai source tree' in source_problem.what
    source = release_tree(tmp_path / 'src', '0.9.2')
    assert check_local_sources(source, deps, '0.9.2') == []


# ------------------------------------------------------------------ the table and the sources

def mirror(repo):
    path = MIRRORS / repo.replace('/', '+') / 'repo'
    if GIT is None or not path.is_dir():
        pytest.skip(f'no git mirror of {repo} in {MIRRORS}')
    return path


def show(repo, ref, path):
    return git(f'--git-dir={mirror(repo)}', 'show', f'{ref}:{path}')


@pytest.mark.parametrize('version', sorted(ls.RELEASE_DEPENDENCIES))
def test_the_table_is_what_the_release_declares(version, tmp_path):
    repo, tag = 'microsoft/onnxruntime-genai', f'v{version}'
    source = genai_tree(tmp_path / 'src', show(repo, tag, 'VERSION_INFO').strip(),
                        show(repo, tag, 'cmake/deps.txt'))
    (source / 'cmake' / 'external' / 'onnxruntime_external_deps.cmake').write_text(
        show(repo, tag, 'cmake/external/onnxruntime_external_deps.cmake'))
    pinned = ls.RELEASE_DEPENDENCIES[version]
    assert ls.release_differences(source, version) == []
    assert [d.declared for d in ls.genai_dependencies(source)] == \
        [d.declared for d in pinned.genai]
    (extensions,) = [d for d in pinned.genai if d.folder == ls.EXTENSIONS]
    externals = tmp_path / 'ext' / 'cmake' / 'externals'
    externals.mkdir(parents=True)
    for name in ls.EXTENSIONS_PRESET_EXTERNALS:
        (externals / name).write_text(show('microsoft/onnxruntime-extensions', extensions.pin,
                                           f'cmake/externals/{name}'))
    assert [d.declared for d in ls.extensions_dependencies(tmp_path / 'ext')] == \
        [d.declared for d in pinned.extensions]


REPOSITORIES = {'pybind11': 'pybind/pybind11', 'googletest': 'google/googletest',
                'onnxruntime_extensions': 'microsoft/onnxruntime-extensions',
                'gsl': 'microsoft/GSL', 'dlib': 'davisking/dlib', 'dr_libs': 'mackron/dr_libs',
                'nlohmann_json': 'nlohmann/json'}


@pytest.mark.parametrize('version, folder', [
    (version, dep.folder) for version in sorted(ls.RELEASE_DEPENDENCIES)
    for dep in ls.RELEASE_DEPENDENCIES[version].every])
def test_the_pinned_fingerprints_are_those_of_the_commits(version, folder):
    (dep,) = [d for d in ls.RELEASE_DEPENDENCIES[version].every if d.folder == folder]
    git_dir = f'--git-dir={mirror(REPOSITORIES[folder])}'
    assert git(git_dir, 'rev-parse', f'{dep.ref}^{{commit}}').strip() == dep.commit
    # the blob ids of the tree are the files' (none of these applies a checkout filter), so the
    # tree gives the fingerprint without the content, which a mirror may leave out
    listed = [line.split('\t', 1) for line in git(git_dir, 'ls-tree', '-r', '-z', dep.commit)
              .split('\0') if line]
    assert ls.combine_fingerprint([(path, meta.split()[2]) for meta, path in listed
                                   if meta.split()[1] == 'blob']) == dep.fingerprint
