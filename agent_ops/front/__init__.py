"""The faces of the tool: the CLI, its live view, the operations layer they share with the MCP server."""
