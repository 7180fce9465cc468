"""What the tests share, apart from pytest fixtures (tests/conftest.py holds those only):

- cli: a config in a temp folder and the real `loader` CLI in a child process;
- postgres: a fresh database on the session's PostgreSQL server;
- expected: an independent computation, over the landing zone, of what the warehouse must hold;
- readers: one reader per sink (Parquet, Delta, Snowflake) of what it holds, written with the sinks'
  own libraries (pyarrow, deltalake, the Snowflake connector) and none of the loader's sink code;
- warehouse: what the sinks hold compared with the expected results;
- conformance: the harness of the sink conformance suite (real sinks, the readers above);
- snowflake_emulator, s3_server, tcp_proxy, browser: fakesnow's server, moto's S3 server, a fault
  injecting TCP proxy and headless Chromium;
- gpu_standin: a stand-in cuDF/CuPy, put on PYTHONPATH by the GPU plumbing tests."""
