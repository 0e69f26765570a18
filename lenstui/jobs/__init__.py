"""The worker: the typed request/result protocol (``protocol``), the scheduler that owns
the model (``scheduler``) and what each request does (``handlers``)."""
