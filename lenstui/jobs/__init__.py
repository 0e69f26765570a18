"""The worker: the typed request/result protocol (``protocol``), the scheduler whose
thread owns the model (``scheduler``) and what each request does (``handlers``).

By default the scheduler runs in a child process (``child``), which the UI's side
(``process.ProcessWorker``) starts and speaks to over a socket, results crossing as
``transport`` encodes them; ``LENSTUI_IN_PROCESS=1`` (and apps given a model built in
memory) keep it on a thread of the UI's process instead."""
