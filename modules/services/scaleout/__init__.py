"""Scale-out: one UI and API over GPU workers on several hosts, through Ray (an optional dependency).

Nothing here imports ``ray`` at module level except :mod:`.ray_queue`, :mod:`.pool` and
:mod:`.cluster`, which only the composition root and the ``worker`` command load, and only when a
Ray address is configured. The worker side (:mod:`.worker`, :mod:`.engine_host`) never imports
gradio or fastapi.
"""
