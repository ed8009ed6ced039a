"""Every relative link in README.md and docs/*.md leads to a file, and its #anchor to a heading."""
import glob
import os.path as osp
import re

import pytest

from testing_utils import REPO

PAGES = [osp.join(REPO, 'README.md')] + sorted(glob.glob(osp.join(REPO, 'docs', '*.md')))
LINK = re.compile(r'!?\[[^\]]*\]\(([^)\s]+)\)')


def prose(path: str) -> str:
    """The page without its fenced code blocks (``#`` there is a comment, not a heading)."""
    with open(path, encoding='utf-8') as f:
        return re.sub(r'^```.*?^```', '', f.read(), flags=re.S | re.M)


def anchors(path: str) -> set:
    """GitHub's heading anchors: lower case, punctuation but '-' and '_' dropped,
    spaces to '-'."""
    headings = re.findall(r'^#+\s+(.*?)\s*$', prose(path), flags=re.M)
    return {re.sub(r'[^\w\- ]', '', h.lower()).replace(' ', '-') for h in headings}


def relative_links(path: str):
    for target in LINK.findall(prose(path)):
        if not re.match(r'[a-z][a-z0-9+.-]*:', target):  # not http:, mailto:, ...
            yield target


def test_anchor_rule_on_known_headings():
    assert anchors(osp.join(REPO, 'docs', 'user_guide.md')) >= {
        'distill_losses-entries', 'derived-options', 'a-distillation-config'}


def test_the_docs_link_to_each_other():
    readme = set(relative_links(PAGES[0]))
    for page in ('install', 'user_guide', 'losses', 'demo', 'benchmarks',
                 'checkpoint_safety', 'faq', 'contributing'):
        assert f'docs/{page}.md' in readme


@pytest.mark.parametrize('page', PAGES, ids=[osp.relpath(p, REPO) for p in PAGES])
def test_relative_links_resolve(page):
    broken = []
    for target in relative_links(page):
        file, _, anchor = target.partition('#')
        dest = osp.normpath(osp.join(osp.dirname(page), file)) if file else page
        if not osp.exists(dest):
            broken.append(f'{target} (no {osp.relpath(dest, REPO)})')
        elif anchor and dest.endswith('.md') and anchor not in anchors(dest):
            broken.append(f'{target} (no heading #{anchor} in {osp.relpath(dest, REPO)})')
    assert not broken, f'{osp.relpath(page, REPO)}: broken links {broken}'
