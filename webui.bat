@echo off
rem Install (first run) and start Atelier.  Usage: webui.bat [flags]   (see: webui.bat --help)
rem Environment, as in A1111: COMMANDLINE_ARGS, TORCH_COMMAND, PYTHON, VENV_DIR.
setlocal
cd /d "%~dp0"

if not defined PYTHON set PYTHON=python
if not defined VENV_DIR set VENV_DIR=venv
if not defined TORCH_COMMAND set TORCH_COMMAND=pip install torch==2.14.1 torchvision==0.29.1

if not exist "%VENV_DIR%\Scripts\python.exe" (
    echo Creating virtual environment in %VENV_DIR%
    %PYTHON% -m venv "%VENV_DIR%" || goto :error
)
set VPY="%VENV_DIR%\Scripts\python.exe"

%VPY% -c "import torch" 2>nul || (
    %VPY% -m pip install --quiet --upgrade pip || goto :error
    echo Installing torch: %TORCH_COMMAND%
    %VPY% -m %TORCH_COMMAND% || goto :error
)
rem Quick when everything is already there; picks up changed pins after an update.
%VPY% -m pip install --quiet -r requirements.txt || goto :error

rem xformers: an optional attention backend, installed only when asked for and only with CUDA.
if not defined XFORMERS_PACKAGE set XFORMERS_PACKAGE=xformers==0.0.35
echo %* %COMMANDLINE_ARGS% | findstr /C:"--xformers" >nul && (
    %VPY% -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" && (
        %VPY% -c "import xformers" 2>nul || %VPY% -m pip install --quiet %XFORMERS_PACKAGE%
    ) || echo --xformers: no CUDA GPU here; xformers is not installed.
)

rem Ray: optional, for scale-out (--ray-address, or "webui.bat worker --join HOST:PORT"); same version everywhere.
if not defined RAY_PACKAGE set RAY_PACKAGE=ray==2.60.0
echo %* %COMMANDLINE_ARGS% | findstr /C:"--ray-address" /C:"worker --join" >nul && (
    %VPY% -c "import ray" 2>nul || %VPY% -m pip install --quiet %RAY_PACKAGE%
)

echo %* %COMMANDLINE_ARGS% | findstr /C:"--exit" >nul && (
    echo Installed; --exit given, not starting.
    exit /b 0
)

%VPY% app.py %*
exit /b %ERRORLEVEL%

:error
echo Installation failed; see the messages above.
exit /b 1
