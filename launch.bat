@echo off
rem AI Artist Studio
rem   launch.bat [app options]        set up .venv and start the studio on the built-in model
rem   launch.bat test [pytest options] set up .venv (with test tools) and run the whole test suite
rem   launch.bat bench                print the benchmark numbers
setlocal
cd /d "%~dp0"
set MODE=%1
set EXTRAS=
if "%MODE%"=="test" set EXTRAS=[test]
if "%MODE%"=="bench" set EXTRAS=[test]
if not exist .venv\Scripts\python.exe (
  echo Creating .venv
  py -3.11 -m venv .venv || python -m venv .venv
)
if not exist .venv\.installed%EXTRAS% (
  echo Installing dependencies (first run only)
  .venv\Scripts\python -m pip install --quiet --upgrade pip
  .venv\Scripts\python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
  .venv\Scripts\python -m pip install --quiet -e ".%EXTRAS%"
  type nul > .venv\.installed%EXTRAS%
)
if "%MODE%"=="test" (
  shift
  .venv\Scripts\python -m pytest %2 %3 %4 %5 %6 %7 %8 %9
  exit /b %ERRORLEVEL%
)
if "%MODE%"=="bench" (
  .venv\Scripts\python -m studio.bench
  exit /b %ERRORLEVEL%
)
.venv\Scripts\python app.py --inbrowser %*
