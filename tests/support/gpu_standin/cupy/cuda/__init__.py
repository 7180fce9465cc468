import os


class runtime:  # noqa: N801 - cupy's name
    @staticmethod
    def getDeviceCount() -> int:  # noqa: N802 - cupy's name
        return int(os.environ.get("LOADER_STANDIN_GPUS", "1"))
