"""Who may call what: TLS (mutual between coordinator and regions), bearer tokens with
roles, and keeping secrets out of logs, errors and traces.

Modules (import them directly; this package imports nothing so that building the CLI
parser stays cheap):

* :mod:`.roles` — the access table: which role may call which method;
* :mod:`.tokens` — token files and environment, hashing, :class:`~.tokens.BearerToken`;
* :mod:`.auth` — :class:`~.auth.BearerAuthInterceptor`, the server interceptor;
* :mod:`.client_auth` — attaching a token to calls (interceptors, call credentials);
* :mod:`.tls` — :class:`~.tls.TlsConfig`, reloading server credentials, channel
  credentials, :func:`~.tls.log_transport_security`;
* :mod:`.cert_dates` — a certificate's validity dates and the warning when it has expired,
  is not valid yet or expires soon;
* :mod:`.channels` — :func:`~.channels.mesh_channel` and the balancer's channel factory;
* :mod:`.flags` — CLI flags and environment names (no heavy imports);
* :mod:`.config` — :class:`~.config.ServerSecurity` / :class:`~.config.ClientSecurity`
  from parsed flags;
* :mod:`.devcerts` — a throwaway CA (``openssl``) for local meshes and tests.
"""
