"""Pages in the browser (Gradio, the `web` extra). `chat` holds the chat block that
`tuneforge webchat` shows alone and the web workbench embeds; gradio is imported only when a
page is built."""
