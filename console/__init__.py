"""``hookline console``: the operators' web console and its JSON API, a process of its own."""
