from setuptools import find_packages, setup

exec(open("crust/_version.py").read())  # defines __version__

setup(
    name="crust",
    version=__version__,  # noqa: F821 - defined by the exec above
    description="Threaded peer-to-peer networking: encrypted streams, NAT traversal, LAN discovery",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    license="MIT OR BSD-3-Clause",
    packages=find_packages(include=["crust", "crust.*"]),
    package_data={"crust": ["py.typed"]},
    python_requires=">=3.10",
    install_requires=["pycryptodome>=3.20", "netifaces>=0.11", "miniupnpc>=2.2"],
    extras_require={
        # noiseprotocol: an independent Noise implementation the handshake must interoperate with.
        "test": ["pytest", "pytest-timeout", "hypothesis", "noiseprotocol>=0.3", "mypy"],
        # bench/compare.py: pyzmq PAIR (plaintext and CURVE) as a baseline. Benchmark-only.
        "bench": ["pyzmq"],
    },
    classifiers=[
        "Topic :: System :: Networking",
        "Typing :: Typed",
        "License :: OSI Approved :: MIT License",
        "License :: OSI Approved :: BSD License",
        "Programming Language :: Python :: 3",
    ],
)
