"""``bsmamba2 serve``: a local web page over one shared :class:`~bsmamba2.Separator`.

:mod:`.jobs` is the queue (uploads, limits, worker threads, clean-up) and knows nothing of
HTTP; :mod:`.app` is the Starlette app and ``static/`` the page. Needs the ``[web]`` extra.
"""
