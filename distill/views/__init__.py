"""The curator's pages for runs. `runs` holds the list, submission, the live run page and its actions;
`iterations` holds one iteration's code and output, and the diff between two iterations."""
