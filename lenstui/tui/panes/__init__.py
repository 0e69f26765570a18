"""The explorer's panes: the prompt, the token inspector, the speakability pane."""
