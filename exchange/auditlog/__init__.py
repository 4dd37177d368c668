"""The hub's running audit log: the processes that write, integrate, sign, check and export it.

``audit/`` holds the log's pure parts (tree, notes, records, seals, verification), which read no
store and can be used offline; this package is what a hub process runs over its store: the group
committer that stages exchanges' records (``batch``), the log that integrates and signs
(``log``), the checks of the stored log and of its search indexes (``integrity``, ``indexes``),
and the export auditors verify (``export``).
"""
