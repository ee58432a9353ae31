# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Helpers of the docs stage (scripts/stage_docs.sh), run with .venv-docs' Python.

  guides COLLECTION          the user guides of the site, one per line: the toctree refs of
                             docs/docsite/extra-docs.yml, each made from docs/<ref>.md; fails when
                             a ref has no guide or a guide in docs/ is in no section
  plugins COLLECTION         "name=type" of the plugins and roles whose short name is unique
                             (what a guide's `tcplab.keepalive.<name>` links to)
  inventory OUT.inv          an intersphinx inventory of the ansible-core docs targets our pages
                             refer to (ansible.builtin plugins, ansible-core's environment
                             variables, two reference pages), made from the installed ansible-core,
                             so that the build resolves them without fetching anything
  check HTML_DIR             fails if a page or style sheet of the site loads anything from
                             another host; lists the external hyperlinks (links, not loads)
  netlog NETLOG.json         fails if chromium's network log of a page shows a request that the
                             page made to another host
"""

from __future__ import annotations

import collections
import html.parser
import json
import os
import re
import sys
import urllib.parse
import zlib

import yaml

# docs/*.md that are not user guides: the developer's page (not in the tarball either).
NOT_GUIDES = {"development"}
ANSIBLE_DOCS = "https://docs.ansible.com/projects/ansible/devel/"
# Reference pages of the Ansible docs that antsibull-docs' pages link to.
ANSIBLE_LABELS = {
    "common_return_values": ("reference_appendices/common_return_values.html#common-return-values", "Return Values"),
    "ansible_configuration_settings": ("reference_appendices/config.html#ansible-configuration-settings",
                                       "Ansible Configuration Settings"),
}
PLUGIN_TYPES = ("become", "cache", "callback", "cliconf", "connection", "httpapi", "inventory", "lookup",
                "netconf", "shell", "strategy", "vars", "filter", "test")
LOADING = {"script": "src", "img": "src", "iframe": "src", "embed": "src", "source": "src", "audio": "src",
           "video": "src", "track": "src", "object": "data", "input": "src"}
LINK_LOADS = {"stylesheet", "icon", "shortcut", "preload", "prefetch", "modulepreload", "manifest",
              "preconnect", "dns-prefetch", "apple-touch-icon"}
CSS_URL = re.compile(r"""(?:url\(\s*['"]?|@import\s+['"])((?:https?:)?//[^'")\s]+)""")


def fail(msg: str) -> None:
    print(f"docs: {msg}", file=sys.stderr)
    sys.exit(1)


def guides(collection: str) -> list[str]:
    index = os.path.join(collection, "docs", "docsite", "extra-docs.yml")
    with open(index, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    refs = []
    for section in data.get("sections") or []:
        for entry in section.get("toctree") or []:
            refs.append(entry["ref"] if isinstance(entry, dict) else entry)
    present = {name[:-3] for name in os.listdir(os.path.join(collection, "docs")) if name.endswith(".md")}
    missing = [ref for ref in refs if ref not in present]
    if missing:
        fail(f"{index} lists {', '.join(missing)}: there is no docs/<name>.md of that name")
    unlisted = sorted(present - set(refs) - NOT_GUIDES)
    if unlisted:
        fail(f"docs/{'.md, docs/'.join(unlisted)}.md is in no section of {index}: add it to a section's toctree")
    return refs


def plugins(collection: str) -> list[str]:
    found = collections.defaultdict(set)
    for kind, folder, ext in (("module", "plugins/modules", ".py"), ("connection", "plugins/connection", ".py"),
                              ("filter", "plugins/filter", ".yml")):
        path = os.path.join(collection, folder)
        for name in os.listdir(path) if os.path.isdir(path) else ():
            if name.endswith(ext) and not name.startswith("_"):
                found[name[: -len(ext)]].add(kind)
    for name in os.listdir(os.path.join(collection, "roles")):
        if os.path.exists(os.path.join(collection, "roles", name, "meta", "argument_specs.yml")):
            found[name].add("role")
    return [f"{name}={kinds.pop()}" for name, kinds in sorted(found.items()) if len(kinds) == 1]


def ansible_core_entries() -> list[str]:
    import ansible  # the ansible-core of .venv-docs, the same version as requirements-dev.txt's

    root = os.path.dirname(ansible.__file__)
    entries = [f"{label} std:label -1 {uri} {title}" for label, (uri, title) in ANSIBLE_LABELS.items()]
    sources = [("module", os.path.join(root, "modules"), ".py")]
    sources += [(kind, os.path.join(root, "plugins", kind), ".yml" if kind in ("filter", "test") else ".py")
                for kind in PLUGIN_TYPES]
    for kind, path, ext in sources:
        for name in sorted(os.listdir(path)):
            if name.endswith(ext) and not name.startswith("_"):
                plugin = name[: -len(ext)]
                anchor = f"ansible-collections-ansible-builtin-{plugin}-{kind}".replace("_", "-")
                entries.append(f"ansible_collections.ansible.builtin.{plugin}_{kind} std:label -1 "
                               f"collections/ansible/builtin/{plugin}_{kind}.html#{anchor} ansible.builtin.{plugin} {kind}")
    with open(os.path.join(root, "config", "base.yml"), encoding="utf-8") as f:
        settings = yaml.safe_load(f)
    names = {env["name"] for setting in settings.values() for env in setting.get("env") or () if "name" in env}
    entries += [f"{name} std:envvar 1 reference_appendices/config.html#envvar-$ -" for name in sorted(names)]
    return entries


def inventory(out: str) -> None:
    entries = ansible_core_entries()
    header = "# Sphinx inventory version 2\n# Project: Ansible\n# Version: devel\n" \
             "# The remainder of this file is compressed using zlib.\n"
    with open(out, "wb") as f:
        f.write(header.encode() + zlib.compress(("\n".join(entries) + "\n").encode()))
    print(f"{out}: {len(entries)} targets of {ANSIBLE_DOCS} (from the installed ansible-core)")


def external(url: str) -> bool:
    return url.startswith("//") or urllib.parse.urlsplit(url).scheme in ("http", "https", "ftp", "ws", "wss")


class Page(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.loads: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = {key: value or "" for key, value in attrs}
        if tag in LOADING and external(attr.get(LOADING[tag], "")):
            self.loads.append(f"<{tag} {LOADING[tag]}={attr[LOADING[tag]]}>")
        if tag == "link" and external(attr.get("href", "")) and LINK_LOADS & set(attr.get("rel", "").lower().split()):
            self.loads.append(f"<link rel={attr['rel']} href={attr['href']}>")
        if tag == "a" and external(attr.get("href", "")):
            self.links.append(attr["href"])
        self.loads += [f"style url({url})" for url in CSS_URL.findall(attr.get("style", ""))]

    def handle_data(self, data: str) -> None:
        if self.lasttag == "style":
            self.loads += [f"<style> url({url})" for url in CSS_URL.findall(data)]


def check(site: str) -> None:
    loads, links, pages = [], collections.Counter(), 0
    for folder, dummy, files in os.walk(site):
        for name in sorted(files):
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, site)
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read() if name.endswith((".html", ".css")) else ""
            if name.endswith(".css"):
                loads += [f"{rel}: url({url})" for url in CSS_URL.findall(text)]
            elif name.endswith(".html"):
                pages += 1
                page = Page()
                page.feed(text)
                loads += [f"{rel}: {load}" for load in page.loads]
                links.update(page.links)
    hosts = collections.Counter()
    for url, count in links.items():
        hosts[urllib.parse.urlsplit(url).netloc] += count
    print(f"{pages} pages: {len(loads)} loads from other hosts; {sum(links.values())} external hyperlinks "
          f"({len(links)} distinct) to {', '.join(f'{host} ({n})' for host, n in hosts.most_common()) or 'none'}")
    for url, count in sorted(links.items()):
        print(f"  link {count:4d}x {url}")
    for load in loads:
        print(f"  LOAD {load}")
    if loads:
        fail(f"the site loads {len(loads)} resources from other hosts (above)")


def netlog(path: str) -> None:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        log = json.loads(text)
    except ValueError:  # a browser that was stopped leaves the log unterminated
        log = json.loads(text.rstrip().rstrip(",") + "]}")
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    requests = [event["params"] for event in log["events"] if event["type"] == start and "params" in event]
    # the browser's own background requests have no initiator ("not an origin"); the page's have one
    page = sorted({r["url"] for r in requests if r.get("initiator") != "not an origin" and external(r.get("url", ""))})
    browser = sorted({urllib.parse.urlsplit(r["url"]).netloc for r in requests if r.get("initiator") == "not an origin"})
    print(f"chromium: {len(page)} requests of the page to other hosts; the browser's own background requests "
          f"(unresolvable here by --host-resolver-rules): {', '.join(browser) or 'none'}")
    for url in page:
        print(f"  PAGE REQUEST {url}")
    if page:
        fail("the page requested resources from other hosts (above)")


def main(argv: list[str]) -> None:
    commands = {"guides": lambda a: print("\n".join(guides(a))), "plugins": lambda a: print(" ".join(plugins(a))),
                "inventory": inventory, "check": check, "netlog": netlog}
    if len(argv) != 2 or argv[0] not in commands:
        fail(f"usage: docs_site.py {{{'|'.join(commands)}}} PATH")
    commands[argv[0]](argv[1])


if __name__ == "__main__":
    main(sys.argv[1:])
