@echo off
rem Install (first run) and start Atelier.  Usage: webui.bat [flags]   (see: webui.bat --help)
rem Environment, as in A1111: COMMANDLINE_ARGS, TORCH_COMMAND, PYTHON, VENV_DIR.
setlocal
cd /d "%~dp0"

if not defined PYTHON set PYTHON=python
if not defined VENV_DIR set VENV_DIR=venv
if not defined TORCH_COMMAND set TORCH_COMMAND=pip install torch==2.13.0

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

echo %* %COMMANDLINE_ARGS% | findstr /C:"--exit" >nul && (
    echo Installed; --exit given, not starting.
    exit /b 0
)

%VPY% app.py %*
exit /b %ERRORLEVEL%

:error
echo Installation failed; see the messages above.
exit /b 1
