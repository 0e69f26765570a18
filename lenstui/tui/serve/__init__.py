"""The explorer in a web browser: ``lenstui serve``'s server and the tabs' web driver.

- :mod:`lenstui.tui.serve.server`: textual-serve's ``Server`` hardened (who may connect:
  a per-run token, the Host and Origin checks; a tab limit; bind errors as one sentence;
  tab processes that always end with their websocket and with the server). It never
  imports Textual, torch or the engine: the server process only relays bytes.
- :mod:`lenstui.tui.serve.driver`: the tabs' Textual driver (textual's ``WebDriver``,
  plus a SIGTERM and a closed stdin that end the app within seconds whatever it is doing).

They live with the tui because they are the tui, delivered through a browser: the
server runs ``python -m lenstui.cli`` per tab with this driver; the CLI verb
(``lenstui.cli.serve_cmd``) only turns options into a server.
"""
