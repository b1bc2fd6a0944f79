"""``earshot serve``: an HTTP transcription server that batches concurrent requests.

    earshot serve --model exp/an4/model --port 8000
    curl -F file=@talk.wav -F response_format=verbose_json \\
         http://127.0.0.1:8000/v1/audio/transcriptions

``command`` parses the arguments (and imports nothing heavy, so ``earshot --help`` stays
fast), ``app`` is the FastAPI application (the endpoint, its limits and errors),
``upload`` reads a bounded request body and decodes its audio, ``formats`` renders a
result as the OpenAI API answers it, and ``batching`` is the queue whose worker decodes
requests with the same options together. FastAPI and uvicorn are imported only by
``app`` and by ``command.run`` (the ``serve`` extra).
"""
