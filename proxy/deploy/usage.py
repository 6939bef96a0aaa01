"""What the command prints at the end: how to call the deployment, ready to paste."""

from __future__ import annotations

from proxy.deploy.plan import PROXY_API_KEY, PROXY_PORT, Plan

__all__ = ["usage_text"]


def usage_text(plan: Plan, *, service_url: str | None = None) -> str:
    """Snippets for a UbiOps request, a streamed request, the OpenAI-compatible endpoint, and
    (when enabled) the forwarded port and the service. They read the token from the
    environment; no secret is written out."""
    o = plan.options
    chat_model = next((m for m in plan.catalog if not m.is_embedding), None)
    embedding_model = next((m for m in plan.catalog if m.is_embedding), None)
    chat = chat_model.configured_as if chat_model else None
    embedding = embedding_model.configured_as if embedding_model else None
    # Through the OpenAI-compatible endpoint, models go by their names in the label.
    chat_label = plan.catalog.label_name_of(chat_model) if chat_model else None
    embedding_label = plan.catalog.label_name_of(embedding_model) if embedding_model else None
    prefix = f"ubiops-deployment/{o.deployment}/{o.version}/"
    model = chat or embedding or ""
    lines = [
        "",
        "How to call it (set UBIOPS_API_TOKEN first; it may carry the 'Token ' prefix):",
        "",
        "# A UbiOps request (the body is the OpenAI JSON, sent as plain text)",
        "import json, os, ubiops",
        'token = os.environ["UBIOPS_API_TOKEN"].removeprefix("Token ")',
        f'configuration = ubiops.Configuration(host="{o.api_host}")',
        'configuration.api_key["Authorization"] = "Token " + token',
        "api = ubiops.CoreApi(ubiops.ApiClient(configuration))",
        f'body = {{"model": "{model}", "messages": [{{"role": "user", "content": "Hello"}}]}}',
        "result = api.deployment_version_requests_create(",
        f'    "{o.project}", "{o.deployment}", "{o.version}", json.dumps(body)',
        ")",
        "print(result.result)",
        "",
        "# A streamed request (the last chunk carries the token usage and no choices)",
        "for chunk in ubiops.utils.stream_deployment_request(",
        f'    api.api_client, "{o.project}", "{o.deployment}", version="{o.version}",',
        '    data=json.dumps(body | {"stream": True}),',
        "):",
        '    for choice in json.loads(chunk)["choices"]:',
        '        print(choice["delta"].get("content") or "", end="")',
        "",
        "# The OpenAI-compatible endpoint",
        "from openai import OpenAI",
        "client = OpenAI(",
        "    api_key=token,",
        f'    base_url="{o.api_host}/projects/{o.project}/openai-compatible/v1/",',
        ")",
    ]
    if chat:
        lines += [
            "reply = client.chat.completions.create(",
            f'    model="{prefix}{chat_label}",',
            '    messages=[{"role": "user", "content": "Hello"}],',
            ")",
        ]
    if embedding:
        lines += [
            "vectors = client.embeddings.create(",
            f'    model="{prefix}{embedding_label}", input="Hello"',
            ")",
        ]
    lines.append("print([m.id for m in client.models.list()])  # from the openai-model-names label")
    for port in plan.ports:
        lines += [
            "",
            f"# Forwarded port {port.public_port}/{port.protocol} -> proxy port "
            f"{port.deployment_port}, on each running instance's own address. It answers",
            "# only while an instance runs (none at rest with --min-instances 0: send a",
            f"# request first). The proxy requires {PROXY_API_KEY}. The running instances:",
            f'for item in api.instances_list("{o.project}", "{o.deployment}", "{o.version}")'
            ".results:",
            f'    node = api.instances_get("{o.project}", "{o.deployment}", item.id, '
            f'"{o.version}").node',
            "    print(item.status, node.ipv4_address if node else None)",
            f'OpenAI(base_url="http://<address>:{port.public_port}/v1", api_key=<{PROXY_API_KEY}>)',
        ]
    if plan.service is not None:
        url = service_url or f"<the URL of service {plan.service.name}>"
        lines += [
            "",
            f"# Service {plan.service.name}: {url} -> proxy port {PROXY_PORT}",
            "# UbiOps checks the token (and does not pass it on); the proxy checks x-api-key",
            "direct = OpenAI(",
            f'    base_url="{url}/v1",',
            f"    api_key=<{PROXY_API_KEY}>,",
            '    default_headers={"Authorization": "Token " + token, '
            f'"x-api-key": <{PROXY_API_KEY}>}},',
            ")",
        ]
    return "\n".join(lines)
