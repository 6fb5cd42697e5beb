package proctor

import rego.v1

# An example policy for a Proctor home that governs MCP servers (docs/mcp.md). It is
# argument-aware: filesystem tools (server "fs", @modelcontextprotocol/server-filesystem)
# are judged by the paths in their arguments against data.mcp.roots.
#
#   - a call whose path arguments leave the allowed roots (or use "..") is denied;
#   - a read inside the roots executes; creating a directory inside them executes;
#   - writing or editing a file inside the roots asks the user (confirm);
#   - moving a file inside the roots needs an approver of data.mcp.approver_roles;
#   - actions listed in data.mcp.execute / data.mcp.confirm execute / ask the user;
#   - anything else (undeclared tools included) needs an approval: fail closed.
#
# data.json:
#   {"mcp": {"roots": ["/home/me/work"], "approver_roles": ["ops"],
#            "execute": ["mcp.everything.get_sum"], "confirm": ["mcp.everything.echo"]}}

_fs_reads := {
	"mcp.fs.read_file", "mcp.fs.read_text_file", "mcp.fs.read_media_file",
	"mcp.fs.read_multiple_files", "mcp.fs.list_directory", "mcp.fs.list_directory_with_sizes",
	"mcp.fs.directory_tree", "mcp.fs.search_files", "mcp.fs.get_file_info",
}

_fs_writes := {"mcp.fs.write_file", "mcp.fs.edit_file", "mcp.fs.create_directory", "mcp.fs.move_file"}

_roles := object.get(data.mcp, "approver_roles", ["supervisor"])

# Every path-like argument of a step: path, source, destination and the paths list.
_paths(s) := {p | some k in ["path", "source", "destination"]; p := s.params[k]} | {p |
	some p in object.get(s.params, "paths", [])
}

# Inside a root: a string under one of the roots, with no ".." segment (no way out of it).
_inside(p) if {
	is_string(p)
	not contains(p, "..")
	some root in data.mcp.roots
	_under(p, root)
}

_under(p, root) if p == root

_under(p, root) if startswith(p, concat("", [trim_right(root, "/"), "/"]))

_all_inside(s) if {
	ps := _paths(s)
	count(ps) > 0
	every p in ps {
		_inside(p)
	}
}

_fs(s) if s.action in _fs_reads

_fs(s) if s.action in _fs_writes

step_decision(s) := {"outcome": "deny", "reasons": ["a path outside the allowed roots"]} if {
	_fs(s)
	not _all_inside(s)
} else := {"outcome": "execute", "reasons": ["a read inside the allowed roots"]} if {
	s.action in _fs_reads
} else := {"outcome": "execute", "reasons": ["a new directory inside the allowed roots"]} if {
	s.action == "mcp.fs.create_directory"
} else := {"outcome": "confirm", "reasons": ["a file change inside the allowed roots"]} if {
	s.action in {"mcp.fs.write_file", "mcp.fs.edit_file"}
} else := {"outcome": "execute", "reasons": ["listed in data.mcp.execute"]} if {
	s.action in object.get(data.mcp, "execute", [])
} else := {"outcome": "confirm", "reasons": ["listed in data.mcp.confirm"]} if {
	s.action in object.get(data.mcp, "confirm", [])
} else := {
	"outcome": "approve",
	"reasons": ["no rule lets this tool run unattended"],
	"approvals": 1,
	"approver_roles": _roles,
}

decision := {"steps": {s.id: step_decision(s) | some s in input.steps}, "plan": {}}
