"""The documentation: generated tables in step with their sources (python -m scripts.docs),
the generator's rendering, links that resolve, and a README that stays a guide."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from policy.rules import rules_markdown
from scripts import docs

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PAGES = sorted([ROOT / "README.md", *DOCS.rglob("*.md")])


# --- the generated blocks --------------------------------------------------------------------

def test_the_generated_pages_are_not_stale() -> None:
    assert docs.stale_pages() == [], "run: venv/bin/python -m scripts.docs"


def _copy_of_the_docs(tmp_path: Path) -> Path:
    target = tmp_path / "docs"
    shutil.copytree(DOCS, target)
    return target


def test_check_names_the_stale_page_and_changes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = _copy_of_the_docs(tmp_path)
    page = folder / "configuration.md"
    stale = page.read_text().replace("| `azCount` | integer | `2` |", "| `azCount` | integer | `4` |")
    page.write_text(stale)

    assert docs.main(["--check", "--docs-dir", str(folder)]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("FAIL: 1 of 3 generated pages are stale: ") and "configuration.md" in last
    assert "run python -m scripts.docs" in last
    assert page.read_text() == stale

    assert docs.main(["--docs-dir", str(folder)]) == 0
    assert page.read_text() == (DOCS / "configuration.md").read_text()
    assert docs.main(["--check", "--docs-dir", str(folder)]) == 0


def test_writing_leaves_the_hand_written_text_alone(tmp_path: Path) -> None:
    folder = _copy_of_the_docs(tmp_path)
    page = folder / "policy.md"
    text = page.read_text().replace("## checkov skip list", "## checkov skip list\n\nA sentence of our own.")
    text = re.sub(r"(<!-- generated: checkov-skips -->\n).*?(<!-- end generated: checkov-skips -->)", r"\1old\n\2",
                  text, flags=re.DOTALL)
    page.write_text(text)
    assert docs.main(["--docs-dir", str(folder)]) == 0
    assert "A sentence of our own." in page.read_text()
    assert page.read_text().replace("\n\nA sentence of our own.", "") == (DOCS / "policy.md").read_text()


def test_a_page_without_its_block_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = _copy_of_the_docs(tmp_path)
    page = folder / "outputs.md"
    page.write_text(page.read_text().replace("<!-- end generated: outputs -->", ""))
    with pytest.raises(docs.cli.ScriptError) as err:
        docs.main(["--check", "--docs-dir", str(folder)])
    assert err.value.exit_code == 1
    assert "outputs.md has no `<!-- generated: outputs -->`" in str(err.value)


def test_replace_block_puts_the_body_between_the_markers_only() -> None:
    text = "before\n<!-- generated: x -->\nold\n<!-- end generated: x -->\nafter\n"
    once = docs.replace_block(text, "x", "new\n")
    assert once == "before\n<!-- generated: x -->\nnew\n<!-- end generated: x -->\nafter\n"
    assert docs.replace_block(once, "x", "new") == once
    with pytest.raises(docs.DocsError, match="has 2 "):
        docs.replace_block(text + text, "x", "new")
    with pytest.raises(docs.DocsError, match="page.md has no "):
        docs.replace_block("no markers", "x", "new", "page.md")


# --- rendering ----------------------------------------------------------------------------------

PROJECT: dict[str, Any] = {
    "name": "demo",
    "config": {
        "pulumi:disable-default-providers": {"value": ["aws"]},
        "mode": {"type": "string", "description": "Which | mode."},
        "zones": {"type": "array", "items": {"type": "string"}, "description": "Zones,\n  one per line.",
                  "default": ["a", "b"]},
        "enabled": {"type": "boolean", "description": "On or off.", "default": False},
        "token": {"type": "string", "description": "A secret.", "default": ""},
    },
}
STACK_FILES: dict[str, dict[str, Any]] = {
    "staging": {"config": {"aws:region": "eu-central-1", "demo:mode": "small", "demo:enabled": True}},
    "prod": {"config": {"aws:region": "eu-central-1", "demo:mode": "large", "demo:token": {"secure": "AAEAxyz"}}},
}


def test_the_configuration_table_shows_declarations_and_what_each_stack_sets() -> None:
    table = docs.render_configuration(PROJECT, STACK_FILES)
    lines = table.splitlines()
    assert "| key | type | default | staging | prod | description |" in lines
    assert "| `mode` | string | **required** | `small` | `large` | Which \\| mode. |" in lines
    assert "| `zones` | array of strings | `[a, b]` |  |  | Zones, one per line. |" in lines
    assert "| `enabled` | boolean | `false` | `true` |  | On or off. |" in lines
    assert "| `token` | string | `\"\"` |  | [secret] | A secret. |" in lines
    assert "AAEAxyz" not in table
    namespaced = lines[lines.index("| key | Pulumi.yaml | staging | prod |"):]
    assert "| `pulumi:disable-default-providers` | `[aws]` |  |  |" in namespaced
    assert "| `aws:region` |  | `eu-central-1` | `eu-central-1` |" in namespaced
    assert not any(line.startswith("| `pulumi:") for line in lines[:lines.index("| key | Pulumi.yaml | staging | prod |")])


def test_the_outputs_table_marks_the_conditional_outputs() -> None:
    table = docs.render_outputs({"vpc_id": "the VPC", "waf_arn": "the web ACL | when on"}, {"waf_arn"})
    assert "| `vpc_id` | always | the VPC |" in table.splitlines()
    assert "| `waf_arn` | in some configurations | the web ACL \\| when on |" in table.splitlines()
    with pytest.raises(docs.DocsError, match="OUTPUTS lacks: gone"):
        docs.render_outputs({"vpc_id": "the VPC"}, {"gone"})


def test_the_checkov_table_lists_each_skip_with_its_scope_and_reason() -> None:
    table = docs.render_checkov_skips({"skips": [
        {"check": "CKV_AWS_1", "resources": ["db-*", "cache"], "reason": "Because\n  it is so."},
        {"check": "CKV2_AWS_2", "stacks": ["staging"], "reason": "Staging is small."},
    ]})
    assert "| `CKV_AWS_1` | all | `db-*`, `cache` | Because it is so. |" in table.splitlines()
    assert "| `CKV2_AWS_2` | staging | `*` | Staging is small. |" in table.splitlines()
    with pytest.raises(docs.DocsError, match="a list under 'skips'"):
        docs.render_checkov_skips({"skip": []})


def test_the_policy_block_is_the_rules_table() -> None:
    assert docs.render_policy_rules().endswith(rules_markdown())


def test_the_generator_imports_neither_pulumi_nor_the_program() -> None:
    probe = ("import sys, scripts.docs as d; d.stale_pages(); "
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pulumi', 'pulumi_aws', 'components') "
             "or m in ('infra.program', 'infra.config', 'infra.mock_engine')))")
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# --- links and the README ---------------------------------------------------------------------

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    in_code = False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if in_code or not re.match(r"#{1,6} ", line):
            continue
        slug = _slug(line.lstrip("#"))
        anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


def _links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
    return [target for target in LINK.findall(text) if not re.match(r"[a-z]+:", target)]


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_link_points_at_a_file_and_heading_that_exist(page: Path) -> None:
    for target in _links(page):
        path_part, _, anchor = target.partition("#")
        linked = (page.parent / path_part).resolve() if path_part else page
        assert linked.exists(), f"{target} (from {page.relative_to(ROOT)})"
        if anchor:
            assert linked.is_file() and anchor in _anchors(linked), f"{target} (from {page.relative_to(ROOT)})"


def test_the_slug_follows_github() -> None:
    assert _slug(' Rollback with the data (go-live plan, "Rollback Plan")') == "rollback-with-the-data-go-live-plan-rollback-plan"
    assert _slug("Dashboards (spec 5.6.2)") == "dashboards-spec-562"
    assert _slug("`scripts.backup` option") == "scriptsbackup-option"


def test_the_readme_is_a_guide_that_links_every_page() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    linked = {(ROOT / target.partition("#")[0]).resolve() for target in _links(ROOT / "README.md")}
    for page in DOCS.rglob("*.md"):
        assert page.resolve() in linked, f"README.md does not link {page.relative_to(ROOT)}"


def test_the_readme_keeps_the_commands_ci_and_newcomers_run() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    marker = lines.index("<!-- ci:test-command -->")
    assert lines[marker + 1:marker + 4] == ["```bash", "venv/bin/python -m pytest -n 2", "```"]  # what .ci/run reads
    assert "python3 -m venv venv && venv/bin/pip install -r requirements.txt" in lines
    assert "venv/bin/python -m scripts.plan --stack prod" in lines
