-- Copyright (c) tcplab.keepalive developers
-- GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
-- SPDX-License-Identifier: GPL-3.0-or-later
--
-- pandoc filter of the docs stage (scripts/stage_docs.sh): one user guide docs/<guide>.md (GitHub
-- Markdown, the only copy) becomes the antsibull-docs extra doc docs/docsite/rst/<guide>.rst of the
-- site's staged copy of the collection. From the environment:
--   DOC_NAME     the guide's name (<guide>)
--   DOC_GUIDES   the names of all guides in the site (docs/docsite/extra-docs.yml), space-separated
--   DOC_PLUGINS  "name=type ..." of the collection's plugins and roles whose short name is unique
-- It
--   - labels each section (.. _ansible_collections.tcplab.keepalive.docsite.<guide>[.<anchor>]:),
--     the prefix antsibull-docs requires of extra docs' labels;
--   - turns links to another guide (x.md, x.md#anchor) and within the guide (#anchor) into :ref:s,
--     and unlinks relative links to files that are not in the site (sources, the developer page);
--   - turns `tcplab.keepalive.<name>` in running text into an :ansplugin: link to its page;
--   - drops HTML comments (the licence header) and gives plain code blocks, and JSON excerpts
--     with elisions, the "text" lexer (the site's default lexer is YAML+Jinja).

local PREFIX = 'ansible_collections.tcplab.keepalive.docsite.'
local DOC = os.getenv('DOC_NAME') or error('DOC_NAME is not set')

local function set_of(words, sep)
  local result = {}
  for word in (words or ''):gmatch('%S+') do
    local key, value = word:match('^([^' .. sep .. ']+)' .. sep .. '(.+)$')
    if key then result[key] = value else result[word] = true end
  end
  return result
end

local GUIDES = set_of(os.getenv('DOC_GUIDES'), '=')
local PLUGINS = set_of(os.getenv('DOC_PLUGINS'), '=')

local function label(guide, anchor)
  if anchor and anchor ~= '' then return PREFIX .. guide .. '.' .. anchor end
  return PREFIX .. guide
end

local function escape(text)
  return (text:gsub('([\\`<>])', '\\%1'))
end

local function ref(text, target, bare)
  if bare then return pandoc.RawInline('rst', ':ref:`' .. target .. '`') end
  return pandoc.RawInline('rst', ':ref:`' .. escape(text) .. ' <' .. target .. '>`')
end

-- Headers: a label before each; their inline code stays code (no links in titles).
local function header(el)
  el = pandoc.walk_block(el, {Code = function(code) code.classes:insert('nolink') return code end})
  local name = el.level == 1 and label(DOC) or label(DOC, el.identifier)
  el.identifier = '' -- else pandoc writes a label of its own, without the prefix
  -- (the empty paragraph is the blank line an explicit markup block needs before the title)
  return {pandoc.RawBlock('rst', '.. _' .. name .. ':'), pandoc.Para({}), el}
end

local function link(el)
  local target = el.target
  local text = pandoc.utils.stringify(el.content)
  if target:match('^%a[%w+.-]*:') then return nil end -- http(s), mailto: as they are
  local anchor = target:match('^#(.+)$')
  if anchor then return ref(text, label(DOC, anchor)) end
  local guide, rest = target:match('^([%w_-]+)%.md(.*)$')
  if guide and GUIDES[guide] then
    anchor = rest:match('^#(.+)$')
    -- "[audit.md](audit.md)": the guide's own title reads better than its file name
    return ref(text, label(guide, anchor), text == guide .. '.md' and not anchor)
  end
  return el.content -- a file that is not part of the site: its text, unlinked
end

local function code(el)
  if el.classes:includes('nolink') then return nil end
  local name = el.text:match('^tcplab%.keepalive%.([%w_]+)$')
  local kind = name and PLUGINS[name]
  if kind then return pandoc.RawInline('rst', ':ansplugin:`tcplab.keepalive.' .. name .. '#' .. kind .. '`') end
  return nil
end

local function html_comment(el)
  if el.format == 'html' and el.text:match('^%s*<!%-%-') then return {} end
  return nil
end

-- An excerpt of JSON with elisions ("...") is not JSON: rstcheck and Sphinx' lexer reject it.
local function code_block(el)
  if #el.classes == 0 or (el.classes[1] == 'json' and el.text:find('...', 1, true)) then el.classes = {'text'} end
  return el
end

return {
  {Header = header},
  {Link = link, Code = code, RawBlock = html_comment, RawInline = html_comment, CodeBlock = code_block},
}
