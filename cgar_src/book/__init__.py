"""The book's plumbing: validation of every chapter's parameters (``params``) and the parameter profiles
(``run``; the profiles ship as package data in ``cgar_src.book.profiles``)."""
